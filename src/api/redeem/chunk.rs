//! The chunk parameters of Resumable.js and flow.js, and their chunk
//! arithmetic. A request is a chunk when it carries the four parameters of
//! one library (`resumableChunkNumber`, `resumableChunkSize`,
//! `resumableTotalSize`, `resumableIdentifier`, or the `flow…` ones), in the
//! query or the form; Resumable.js's multipart mode sends them in both, with
//! the same values.
//!
//! Both libraries cut a file the same way: `max(floor(size / chunk), 1)`
//! chunks, the last one holding the rest (1× to 2× the chunk size), or with
//! `forceChunkSize`, `ceil(size / chunk)` chunks, the last one smaller;
//! chunk `n` starts at `(n - 1) × chunk` either way.

/// The parameter names of one library.
struct Names {
    number: &'static str,
    chunk_size: &'static str,
    current_size: &'static str,
    total_size: &'static str,
    identifier: &'static str,
}

const RESUMABLE: Names = Names {
    number: "resumableChunkNumber",
    chunk_size: "resumableChunkSize",
    current_size: "resumableCurrentChunkSize",
    total_size: "resumableTotalSize",
    identifier: "resumableIdentifier",
};

const FLOW: Names = Names {
    number: "flowChunkNumber",
    chunk_size: "flowChunkSize",
    current_size: "flowCurrentChunkSize",
    total_size: "flowTotalSize",
    identifier: "flowIdentifier",
};

/// One chunk, as its request describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// From 1.
    pub number: u64,
    /// The library's configured chunk size.
    pub chunk_size: u64,
    /// This chunk's size, when the library says (both do).
    pub current_size: Option<u64>,
    pub total_size: u64,
    /// The library's name for the file (`size-filename` by default).
    pub identifier: String,
}

impl Chunk {
    /// Whether this chunk is the whole file: its first and only chunk.
    pub fn is_whole_file(&self) -> bool {
        self.number == 1 && self.current_size == Some(self.total_size) && self.fits()
    }

    /// Whether the chunk's number and size fit the libraries' arithmetic,
    /// by either sizing.
    pub fn fits(&self) -> bool {
        [Sizing::Floor, Sizing::Ceil].iter().any(|sizing| {
            match (sizing.size_of(self.number, self), self.current_size) {
                (Some(expected), Some(size)) => expected == size,
                (Some(_), None) => true,
                (None, _) => false,
            }
        })
    }
}

/// How the library cut the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// The default: `max(floor(total / chunk), 1)` chunks, the last one 1×–2×.
    Floor,
    /// `forceChunkSize`: `ceil(total / chunk)` chunks, the last one smaller.
    Ceil,
}

impl Sizing {
    /// How many chunks a file of `total` bytes has in chunks of `chunk`.
    pub fn chunks(self, total: u64, chunk: u64) -> u64 {
        match self {
            Sizing::Floor => (total / chunk).max(1),
            Sizing::Ceil => total.div_ceil(chunk).max(1),
        }
    }

    /// The size chunk `number` of the file must have; `None` past the last.
    fn size_of(self, number: u64, chunk: &Chunk) -> Option<u64> {
        let count = self.chunks(chunk.total_size, chunk.chunk_size);
        if number == 0 || number > count {
            return None;
        }
        let start = (number - 1).checked_mul(chunk.chunk_size)?;
        Some(if number == count { chunk.total_size - start } else { chunk.chunk_size })
    }
}

/// What a request's parameters say about chunking.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkParams {
    /// No chunk parameters: a whole file.
    WholeFile,
    Chunk(Chunk),
    /// Chunk parameters that are not numbers, disagree between the query
    /// and the form, or describe an impossible chunk; the text says which.
    Invalid(String),
}

/// Reads the chunk parameters from the query and the form fields.
pub fn chunk_params(query: &[(String, String)], fields: &[(String, String)]) -> ChunkParams {
    let carries = |names: &Names| {
        [names.number, names.chunk_size, names.total_size, names.identifier]
            .iter()
            .all(|name| query.iter().chain(fields).any(|(n, v)| n == name && !v.is_empty()))
    };
    let names = match (carries(&RESUMABLE), carries(&FLOW)) {
        (true, _) => &RESUMABLE,
        (false, true) => &FLOW,
        (false, false) => return ChunkParams::WholeFile,
    };
    match read(names, query, fields) {
        Ok(chunk) if chunk.chunk_size == 0 => {
            ChunkParams::Invalid(format!("{} must be at least 1", names.chunk_size))
        }
        Ok(chunk) if !chunk.fits() => ChunkParams::Invalid(format!(
            "chunk {} of {} bytes does not fit a file of {} bytes in chunks of {}",
            chunk.number,
            chunk.current_size.unwrap_or_default(),
            chunk.total_size,
            chunk.chunk_size
        )),
        Ok(chunk) => ChunkParams::Chunk(chunk),
        Err(message) => ChunkParams::Invalid(message),
    }
}

fn read(names: &Names, query: &[(String, String)], fields: &[(String, String)]) -> Result<Chunk, String> {
    let number = |name: &str| -> Result<Option<u64>, String> {
        match value(query, fields, name)? {
            None | Some("") => Ok(None),
            Some(text) => text.parse::<u64>().map(Some).map_err(|_| format!("{name} must be a whole number")),
        }
    };
    let required = |name: &str| number(name)?.ok_or_else(|| format!("{name} is missing"));
    Ok(Chunk {
        number: required(names.number)?,
        chunk_size: required(names.chunk_size)?,
        current_size: number(names.current_size)?,
        total_size: required(names.total_size)?,
        identifier: value(query, fields, names.identifier)?.unwrap_or_default().to_owned(),
    })
}

/// The one value of `name`: the query's and the form's agree, or only one
/// gives it; twice in one of them with different values is an error.
fn value<'a>(
    query: &'a [(String, String)],
    fields: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, String> {
    let mut values = query.iter().chain(fields).filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let first = values.next();
    if values.any(|other| Some(other) != first) {
        return Err(format!("{name} is given with different values"));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn chunk(number: u64, current: u64, total: u64, size: u64) -> Chunk {
        Chunk {
            number,
            chunk_size: size,
            current_size: Some(current),
            total_size: total,
            identifier: "id".into(),
        }
    }

    #[test]
    fn both_sizings_are_the_libraries_arithmetic() {
        const MIB: u64 = 1 << 20;
        // 3.5 MiB in 1 MiB chunks: floor gives 3 (the last 1.5 MiB), ceil 4 (the last 0.5 MiB).
        let total = 3 * MIB + MIB / 2;
        assert_eq!((Sizing::Floor.chunks(total, MIB), Sizing::Ceil.chunks(total, MIB)), (3, 4));
        assert!(chunk(1, MIB, total, MIB).fits());
        assert!(chunk(3, MIB + MIB / 2, total, MIB).fits(), "floor's last chunk");
        assert!(chunk(3, MIB, total, MIB).fits(), "ceil's third chunk");
        assert!(chunk(4, MIB / 2, total, MIB).fits(), "ceil's last chunk");
        assert!(!chunk(4, MIB, total, MIB).fits());
        assert!(!chunk(5, 1, total, MIB).fits());
        assert!(!chunk(2, MIB - 1, total, MIB).fits());
        // Smaller than one chunk, and empty: one chunk holding everything.
        assert!(chunk(1, 10, 10, MIB).is_whole_file());
        assert!(chunk(1, 0, 0, MIB).is_whole_file());
        // Between one and two chunks: floor sends it whole, ceil in two.
        assert!(chunk(1, MIB + 5, MIB + 5, MIB).is_whole_file());
        assert!(!chunk(1, MIB, MIB + 5, MIB).is_whole_file());
    }

    #[test]
    fn a_chunk_is_recognised_by_either_librarys_names_in_query_or_form() {
        let resumable = params(&[
            ("resumableChunkNumber", "2"),
            ("resumableChunkSize", "10"),
            ("resumableCurrentChunkSize", "10"),
            ("resumableTotalSize", "35"),
            ("resumableIdentifier", "35-a.mp4"),
        ]);
        let ChunkParams::Chunk(found) = chunk_params(&resumable, &resumable) else { panic!("a chunk") };
        assert_eq!((found.number, found.identifier.as_str()), (2, "35-a.mp4"));
        let flow = params(&[
            ("flowChunkNumber", "1"),
            ("flowChunkSize", "10"),
            ("flowCurrentChunkSize", "5"),
            ("flowTotalSize", "5"),
            ("flowIdentifier", "5-b.mp4"),
        ]);
        assert!(matches!(chunk_params(&[], &flow), ChunkParams::Chunk(c) if c.is_whole_file()));
        assert_eq!(chunk_params(&params(&[("resumableChunkNumber", "1")]), &[]), ChunkParams::WholeFile);
        assert_eq!(chunk_params(&[], &params(&[("note", "x")])), ChunkParams::WholeFile);
    }

    #[test]
    fn impossible_or_contradictory_chunks_are_invalid_with_the_reason() {
        let base = [("resumableChunkSize", "10"), ("resumableTotalSize", "35"), ("resumableIdentifier", "f")];
        let with = |extra: &[(&str, &str)]| {
            let mut all = params(&base);
            all.extend(params(extra));
            all
        };
        let invalid =
            |query: Vec<(String, String)>, fields: Vec<(String, String)>| match chunk_params(&query, &fields)
            {
                ChunkParams::Invalid(message) => message,
                other => panic!("{other:?}"),
            };
        assert!(invalid(with(&[("resumableChunkNumber", "two")]), vec![]).contains("resumableChunkNumber"));
        assert!(invalid(with(&[("resumableChunkNumber", "9")]), vec![]).contains("does not fit"));
        let message =
            invalid(with(&[("resumableChunkNumber", "1")]), params(&[("resumableChunkNumber", "2")]));
        assert!(message.contains("different values"), "{message}");
    }
}
