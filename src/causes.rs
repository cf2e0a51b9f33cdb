//! Error causes kept for the logs: the boxed cause inside a backend's
//! error, and the text of a whole cause chain. Clients never see these.

/// A cause kept inside a backend error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and every cause below it, `: `-separated, for logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_names_every_cause_once() {
        let inner = std::io::Error::other("disk full");
        let outer = std::io::Error::other(inner);
        assert_eq!(super::chain(&outer), "disk full");
        let error = crate::storage::StorageError::backend(std::io::Error::other("refused"));
        assert_eq!(super::chain(&error), "object store: refused");
    }
}
