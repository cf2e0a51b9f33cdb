//! [`SlotLease`]: one reserved upload slot of a token, held while its file
//! is stored. [`SlotLease::commit`] and [`SlotLease::refund`] consume it, so
//! a slot is settled exactly once; a lease dropped unsettled (the request
//! was cut) is refunded by a clean-up task. While it is held, its lease in
//! the state store is renewed, so a long upload keeps its slot and a dead
//! instance's slot comes back when the lease runs out.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::outbox::Outbox;
use crate::domain::{ReplaceToken, unix_now};
use crate::store::{
    CommitError, RecordedVersion, Reservation, ReserveError, StateStore, TokenGrant, TokenKind, VersionFile,
    new_reservation_id,
};
use crate::tasks::Cleanup;

/// A reserved upload slot, renewed until it is committed, refunded or dropped.
pub struct SlotLease {
    reservation: Reservation,
    state: Arc<dyn StateStore>,
    cleanup: Cleanup,
    renewal: tokio::task::JoinHandle<()>,
    lease_secs: u64,
    /// Committed or refunded; until then, dropping refunds.
    settled: bool,
}

/// A commit that did not record the version, as far as the caller knows.
#[derive(Debug)]
pub struct CommitFailed {
    pub error: CommitError,
    /// The store failed in a way that leaves the outcome unknown (a reply
    /// lost after the store applied the commit) and the slot's lease is
    /// gone: the version may be recorded, so its file must be kept.
    pub maybe_recorded: bool,
}

impl SlotLease {
    /// Reserves a slot of `token`, leased for `lease_secs` and renewed every
    /// third of that while the lease is held.
    pub async fn reserve(
        state: &Arc<dyn StateStore>,
        cleanup: &Cleanup,
        token: &ReplaceToken,
        kind: TokenKind,
        lease_secs: u64,
    ) -> Result<SlotLease, ReserveError> {
        let id = new_reservation_id();
        let reservation = match state.reserve_slot(token, kind, &id, unix_now(), lease_secs).await {
            Ok(reservation) => reservation,
            Err(ReserveError::Store(e)) => {
                // The store may apply it yet (a timeout): withdraw it, so a
                // refused redeem never holds a slot.
                let (state, token) = (Arc::clone(state), token.clone());
                cleanup.spawn(async move { withdraw(&*state, &token, &id, lease_secs).await });
                return Err(ReserveError::Store(e));
            }
            Err(refused) => return Err(refused),
        };
        tracing::info!(token = ?reservation.grant.token, reservation = %reservation.id, "upload slot reserved");
        let renewal = tokio::spawn(renew(Arc::clone(state), reservation.clone(), lease_secs));
        Ok(SlotLease {
            reservation,
            state: Arc::clone(state),
            cleanup: cleanup.clone(),
            renewal,
            lease_secs,
            settled: false,
        })
    }

    /// The terms of the token this slot belongs to.
    pub fn grant(&self) -> &TokenGrant {
        &self.reservation.grant
    }

    /// Consumes the slot and records `version` (a replace token's new
    /// current version, an upload token's new photo), both or neither;
    /// `file` names a Resumable.js file; `outbox` is written with it. When the photo is gone or the store
    /// fails before recording, the slot is given back; a lost lease has gone
    /// back already. A store error may also mean the reply was lost after
    /// the commit: the lease tells (a live lease was not committed).
    pub async fn commit(
        mut self,
        version: VersionFile,
        file: Option<&str>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitFailed> {
        self.settled = true;
        let error =
            match self.state.commit_version(&self.reservation, version, unix_now(), file, outbox).await {
                Ok(recorded) => return Ok(recorded),
                Err(error) => error,
            };
        let maybe_recorded = match &error {
            CommitError::LeaseLost => false,
            CommitError::NoSuchPhoto => {
                refund(&*self.state, &self.reservation).await;
                false
            }
            CommitError::Store(_) => {
                match self.state.renew_reservation(&self.reservation, unix_now(), self.lease_secs).await {
                    Ok(true) => {
                        refund(&*self.state, &self.reservation).await;
                        false
                    }
                    Ok(false) | Err(_) => true,
                }
            }
        };
        Err(CommitFailed { error, maybe_recorded })
    }

    /// Gives the slot back to the token.
    pub async fn refund(mut self) {
        self.settled = true;
        refund(&*self.state, &self.reservation).await;
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.settled {
            let (state, reservation) = (Arc::clone(&self.state), self.reservation.clone());
            self.cleanup.spawn(async move { refund(&*state, &reservation).await });
        }
    }
}

/// How often a withdrawal is tried until the store takes it.
const WITHDRAW_RETRY: Duration = Duration::from_secs(1);

/// Withdraws reservation `id` of `token`, trying until the store takes it
/// or until its lease would have run out anyway.
async fn withdraw(state: &dyn StateStore, token: &ReplaceToken, id: &str, lease_secs: u64) {
    let until = unix_now() + lease_secs;
    loop {
        match state.withdraw_reservation(token, id, until).await {
            Ok(()) => {
                tracing::info!(reservation = %id, "a reservation whose answer was lost is withdrawn");
                return;
            }
            Err(e) if unix_now() + WITHDRAW_RETRY.as_secs() < until => {
                tracing::debug!(error = %crate::causes::chain(&e), "withdrawing a reservation failed; trying again");
                tokio::time::sleep(WITHDRAW_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %crate::causes::chain(&e), "a reservation could not be withdrawn; its lease runs out");
                return;
            }
        }
    }
}

/// Refunds a slot; a failure is logged (the lease returns it in the end).
async fn refund(state: &dyn StateStore, reservation: &Reservation) {
    if let Err(e) = state.refund_slot(reservation).await {
        tracing::warn!(reservation = %reservation.id, error = %crate::causes::chain(&e), "slot refund failed; its lease will expire");
    }
}

/// Renews a reservation's lease every third of its length. A renewal that
/// fails is logged; the commit then finds the lease gone and records
/// nothing, so `max_uploads` still holds.
async fn renew(state: Arc<dyn StateStore>, reservation: Reservation, lease_secs: u64) {
    let mut ticks = tokio::time::interval(Duration::from_secs(lease_secs / 3));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match state.renew_reservation(&reservation, unix_now(), lease_secs).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(reservation = %reservation.id, "upload slot lease lost");
                return;
            }
            Err(e) => {
                tracing::warn!(reservation = %reservation.id, error = %crate::causes::chain(&e), "upload slot lease not renewed")
            }
        }
    }
}
