//! `/api/photo/list`: photos and every version of each, so a site can read
//! back what was stored (object key, size, type, checksum of each version).

use std::collections::HashSet;

use super::call::ApiRequest;
use crate::context::Context;
use crate::domain::PhotoId;
use crate::envelope::{Item, List, Success};
use crate::error::ApiError;
use crate::store::Photo;

/// The most photos one call may name.
pub const MAX_PHOTOS: usize = 100;

/// `photo_id`: one id or a comma-separated list; ids that cannot name a
/// photo, or name none, are left out; each photo is listed once, in the
/// order first named.
#[tracing::instrument(skip_all)]
pub async fn list(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let named = request.params.single("photo_id")?.unwrap_or_default();
    let named: Vec<&str> = named.split(',').map(str::trim).filter(|id| !id.is_empty()).collect();
    if named.len() > MAX_PHOTOS {
        return Err(ApiError::InvalidInput(format!("photo_id names more than {MAX_PHOTOS} photos")));
    }
    let mut seen = HashSet::new();
    let ids: Vec<PhotoId> =
        named.iter().filter_map(|id| id.parse::<PhotoId>().ok()).filter(|id| seen.insert(*id)).collect();
    let photos = futures_util::future::try_join_all(ids.into_iter().map(|id| ctx.state.photo(id))).await?;
    let items = photos.iter().flatten().map(photo_item).collect();
    Ok(Success {
        message: "Photos".to_owned(),
        object_name: "photos",
        fields: Vec::new(),
        list: Some(List { element: "photo", json_key: "photos", items }),
        lists: Vec::new(),
    })
}

/// A photo as listed: its fields, then its versions, oldest first.
fn photo_item(photo: &Photo) -> Item {
    let metadata = &photo.metadata;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let fields = vec![
        ("photo_id".into(), photo.photo_id.to_string()),
        ("tree_id".into(), photo.tree_id.clone()),
        ("title".into(), text(&metadata.title)),
        ("description".into(), text(&metadata.description)),
        ("tags".into(), text(&metadata.tags)),
        ("publish".into(), if metadata.publish { "1" } else { "0" }.into()),
        ("album_id".into(), text(&metadata.album_id)),
        ("absolute_url".into(), text(&metadata.absolute_url)),
        ("user_id".into(), text(&metadata.user_id)),
    ];
    let versions = photo
        .versions
        .iter()
        .map(|version| Item {
            fields: vec![
                ("number".into(), version.number.to_string()),
                ("object_key".into(), version.file.object_key.clone()),
                ("size".into(), version.file.size.to_string()),
                ("content_type".into(), version.file.content_type.clone()),
                ("checksum".into(), version.file.checksum()),
                ("created_at".into(), version.file.created_at.to_string()),
            ],
            lists: Vec::new(),
        })
        .collect();
    Item { fields, lists: vec![List { element: "version", json_key: "versions", items: versions }] }
}
