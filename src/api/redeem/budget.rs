//! The budget of failed redeems per client (`limits.redeem_rate_limit_per_minute`).
//! Only an unknown or expired token counts (a used-up token is a real one:
//! a hundred visitors racing for three uploads are not guessing). Every
//! request's token is looked up, so a valid token is never refused, however
//! many failures its address has made (a whole site may reach the receiver
//! through one NAT or load-balancer address); a failure past the budget is
//! answered the same permanent `404`, only later
//! (`limits.redeem_rate_limit_delay_ms`), which slows a guesser down
//! without giving Resumable.js a status it retries.

use std::net::IpAddr;

use super::error::Refusal;
use crate::context::Context;
use crate::domain::unix_now;
use crate::store::ReserveError;

/// The refusal of a slot: an unknown or expired token counts against the
/// client's failure budget.
pub async fn reserve_refusal(ctx: &Context, client: IpAddr, refused: ReserveError) -> Refusal {
    match refused {
        ReserveError::Unknown | ReserveError::Expired => {
            let past_budget = FailureBudget::of(ctx, client, unix_now()).count_failure().await;
            if past_budget { Refusal::UnknownTokenPastBudget } else { Refusal::UnknownToken }
        }
        refused => refused.into(),
    }
}

/// The failed redeems of one client in the current Unix minute.
pub struct FailureBudget<'a> {
    ctx: &'a Context,
    /// Who failures are counted against (see [`client_key`]).
    client: String,
    /// The Unix minute.
    window: u64,
}

impl<'a> FailureBudget<'a> {
    pub fn of(ctx: &'a Context, client: IpAddr, now: u64) -> Self {
        FailureBudget { ctx, client: client_key(client), window: now / 60 }
    }

    fn limit(&self) -> u32 {
        self.ctx.config.limits.redeem_rate_limit_per_minute
    }

    /// Counts a failed redeem against the client; `true` when it is past
    /// the budget. A failure that cannot be counted is not past it.
    pub async fn count_failure(&self) -> bool {
        if self.limit() == 0 {
            return false;
        }
        match self.ctx.state.count_redeem_failure(&self.client, self.window).await {
            Ok(count) => count > self.limit(),
            Err(e) => {
                tracing::warn!(error = %crate::causes::chain(&e), "a failed redeem could not be counted");
                false
            }
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
