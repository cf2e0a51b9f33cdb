//! The budget of failed redeems per client (`limits.redeem_rate_limit_per_minute`):
//! a guesser over it is refused before any token is looked up; a request
//! with a valid token is never counted against it.

use std::net::IpAddr;

use super::error::Refusal;
use crate::context::Context;

/// The failed redeems of one client in the current Unix minute.
pub struct FailureBudget<'a> {
    ctx: &'a Context,
    /// Who failures are counted against (see [`client_key`]).
    client: String,
    /// The Unix minute.
    window: u64,
    /// Seconds left in the window.
    left: u64,
}

impl<'a> FailureBudget<'a> {
    pub fn of(ctx: &'a Context, client: IpAddr, now: u64) -> Self {
        FailureBudget { ctx, client: client_key(client), window: now / 60, left: 60 - now % 60 }
    }

    fn limit(&self) -> u32 {
        self.ctx.config.limits.redeem_rate_limit_per_minute
    }

    /// Refuses a client that has failed too often this minute. Checked
    /// before the token is looked up, so a guesser over the limit learns
    /// nothing more about any token.
    pub async fn check(&self) -> Result<(), Refusal> {
        if self.limit() == 0 {
            return Ok(());
        }
        match self.ctx.state.redeem_failures(&self.client, self.window).await {
            Ok(count) if count >= self.limit() => Err(Refusal::TooManyFailures(self.left)),
            Ok(_) => Ok(()),
            Err(e) => Err(Refusal::Unavailable(e)),
        }
    }

    /// Counts a failed redeem against the client.
    pub async fn count_failure(&self) {
        if self.limit() == 0 {
            return;
        }
        if let Err(e) = self.ctx.state.count_redeem_failure(&self.client, self.window).await {
            tracing::warn!(error = %crate::causes::chain(&e), "a failed redeem could not be counted");
        }
    }
}

/// Who a failed redeem is counted against: an IPv4 address, or the /64
/// network of an IPv6 one (what one subscriber usually holds).
fn client_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        assert_eq!(client_key("203.0.113.9".parse().unwrap()), "203.0.113.9");
        assert_eq!(client_key("::ffff:203.0.113.9".parse().unwrap()), "203.0.113.9");
        assert_eq!(client_key("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::/64");
    }
}
