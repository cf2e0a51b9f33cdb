//! What a site is told of a redeem, as data: the outcome and the
//! parameters added to `return_url` (see [`crate::callback`] for how it is
//! told). Depends on nothing else of the crate, so that the state store can
//! keep it in a delivery.

use serde::{Deserialize, Serialize};

/// Parameters the receiver sets; an extra parameter with one of these names
/// is dropped rather than allowed to replace or shadow them.
pub const RESERVED: [&str; 7] =
    ["domain", "replace_token", "upload_token", "photo_id", "tree_id", "token", "error_message"];

/// How the redeem ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Stored { photo_id: String, tree_id: String, token: String },
    Failed { error_message: String },
}

/// Everything the site is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnData {
    pub domain: String,
    /// `replace_token` or `upload_token`, and the token.
    pub token: (String, String),
    pub outcome: Outcome,
    /// The request's other parameters, repeated to the site.
    pub extras: Vec<(String, String)>,
}

impl ReturnData {
    /// The same data with a failed outcome.
    pub fn failed(&self, error_message: String) -> ReturnData {
        ReturnData { outcome: Outcome::Failed { error_message }, ..self.clone() }
    }

    /// The parameters in order: `domain`, the token, then the outcome's,
    /// then the extras that do not collide with those.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut params =
            vec![("domain".to_owned(), self.domain.clone()), (self.token.0.clone(), self.token.1.clone())];
        match &self.outcome {
            Outcome::Stored { photo_id, tree_id, token } => params.extend([
                ("photo_id".to_owned(), photo_id.clone()),
                ("tree_id".to_owned(), tree_id.clone()),
                ("token".to_owned(), token.clone()),
            ]),
            Outcome::Failed { error_message } => {
                params.push(("error_message".to_owned(), error_message.clone()))
            }
        }
        params.extend(self.extras.iter().filter(|(name, _)| !RESERVED.contains(&name.as_str())).cloned());
        params
    }
}
