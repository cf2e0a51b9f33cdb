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
//! chunk `n` starts at `(n - 1) × chunk` either way ([`Sizing`]).

pub use crate::storage::chunked::Sizing;

/// The parameter names of one library.
struct Names {
    number: &'static str,
    chunk_size: &'static str,
    current_size: &'static str,
    total_size: &'static str,
    identifier: &'static str,
    filename: &'static str,
    /// flow.js sends no type.
    declared_type: Option<&'static str>,
}

/// Whether `name` is a parameter of either library's protocol (not an
/// extra parameter for the site).
pub fn is_protocol_parameter(name: &str) -> bool {
    const EITHER: [&str; 9] = [
        "ChunkNumber",
        "ChunkSize",
        "CurrentChunkSize",
        "TotalSize",
        "Type",
        "Identifier",
        "Filename",
        "RelativePath",
        "TotalChunks",
    ];
    let own = name.strip_prefix("resumable").or_else(|| name.strip_prefix("flow"));
    own.is_some_and(|own| EITHER.contains(&own))
}

const RESUMABLE: Names = Names {
    number: "resumableChunkNumber",
    chunk_size: "resumableChunkSize",
    current_size: "resumableCurrentChunkSize",
    total_size: "resumableTotalSize",
    identifier: "resumableIdentifier",
    filename: "resumableFilename",
    declared_type: Some("resumableType"),
};

const FLOW: Names = Names {
    number: "flowChunkNumber",
    chunk_size: "flowChunkSize",
    current_size: "flowCurrentChunkSize",
    total_size: "flowTotalSize",
    identifier: "flowIdentifier",
    filename: "flowFilename",
    declared_type: None,
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
    pub filename: String,
    /// What the library says the file is (may be empty); never trusted.
    pub declared_type: String,
}

impl Chunk {
    /// Whether this chunk is the whole file: its first and only chunk.
    pub fn is_whole_file(&self) -> bool {
        self.number == 1 && self.current_size == Some(self.total_size) && self.fits()
    }

    /// Whether the chunk's number and size fit the libraries' arithmetic,
    /// by either sizing.
    pub fn fits(&self) -> bool {
        Sizing::BOTH.iter().any(|sizing| {
            match (sizing.size_of(self.number, self.total_size, self.chunk_size), self.current_size) {
                (Some(expected), Some(size)) => expected == size,
                (Some(_), None) => true,
                (None, _) => false,
            }
        })
    }

    /// The sizings this chunk fits (its size given).
    pub fn sizings(&self, size: u64) -> Vec<Sizing> {
        Sizing::fitting(self.number, size, self.total_size, self.chunk_size)
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
        filename: value(query, fields, names.filename)?.unwrap_or_default().to_owned(),
        declared_type: match names.declared_type {
            Some(name) => value(query, fields, name)?.unwrap_or_default().to_owned(),
            None => String::new(),
        },
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
            filename: "a.mp4".into(),
            declared_type: String::new(),
        }
    }

    #[test]
    fn a_chunk_fits_either_sizing_and_is_whole_only_alone() {
        const MIB: u64 = 1 << 20;
        let total = 3 * MIB + MIB / 2;
        assert!(chunk(3, MIB + MIB / 2, total, MIB).fits(), "floor's last chunk");
        assert!(chunk(4, MIB / 2, total, MIB).fits(), "ceil's last chunk");
        assert!(!chunk(4, MIB, total, MIB).fits());
        assert!(!chunk(5, 1, total, MIB).fits());
        // Smaller than one chunk, and empty: one chunk holding everything.
        assert!(chunk(1, 10, 10, MIB).is_whole_file());
        assert!(chunk(1, 0, 0, MIB).is_whole_file());
        // Between one and two chunks: floor sends it whole, ceil in two.
        assert!(chunk(1, MIB + 5, MIB + 5, MIB).is_whole_file());
        assert!(!chunk(1, MIB, MIB + 5, MIB).is_whole_file());
    }

    #[test]
    fn only_the_libraries_own_parameters_are_theirs() {
        for name in ["resumableChunkNumber", "resumableRelativePath", "flowTotalChunks", "flowIdentifier"] {
            assert!(is_protocol_parameter(name), "{name}");
        }
        for name in ["flowers", "resumable", "flowChunk", "resumableSession", "session"] {
            assert!(!is_protocol_parameter(name), "{name} is the site's");
        }
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
