//! The Lua scripts of the Redis store, each one file under `lua/`, some
//! begun with shared helpers (`expiry.lua`, `outbox.lua`).

use redis::Script;

/// What scripts that extend expiries begin with (`keep_until`).
const EXPIRY_LUA: &str = include_str!("lua/expiry.lua");
/// The outbox writer the commit scripts begin with (after `EXPIRY_LUA`).
const OUTBOX_LUA: &str = include_str!("lua/outbox.lua");

/// The scripts, compiled once (their SHA-1 is computed here).
pub(super) struct Scripts {
    pub(super) issue_token: Script,
    pub(super) reserve_slot: Script,
    pub(super) renew_reservation: Script,
    pub(super) refund_slot: Script,
    pub(super) withdraw_slot: Script,
    pub(super) append_version: Script,
    pub(super) create_photo: Script,
    pub(super) create_from_token: Script,
    pub(super) update_upload_token: Script,
    pub(super) chunked: Script,
    pub(super) deliveries: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            issue_token: Script::new(include_str!("lua/issue_token.lua")),
            reserve_slot: Script::new(include_str!("lua/reserve_slot.lua")),
            renew_reservation: Script::new(include_str!("lua/renew_reservation.lua")),
            refund_slot: Script::new(include_str!("lua/refund_slot.lua")),
            withdraw_slot: Script::new(include_str!("lua/withdraw_slot.lua")),
            append_version: Script::new(
                &[EXPIRY_LUA, OUTBOX_LUA, include_str!("lua/append_version.lua")].concat(),
            ),
            create_photo: Script::new(include_str!("lua/create_photo.lua")),
            create_from_token: Script::new(
                &[EXPIRY_LUA, OUTBOX_LUA, include_str!("lua/create_from_token.lua")].concat(),
            ),
            update_upload_token: Script::new(include_str!("lua/update_upload_token.lua")),
            chunked: Script::new(&[EXPIRY_LUA, include_str!("lua/chunked.lua")].concat()),
            deliveries: Script::new(&[EXPIRY_LUA, include_str!("lua/deliveries.lua")].concat()),
        }
    }
}
