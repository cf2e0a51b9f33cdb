//! One Redis call, whatever its kind, and whether it may be sent again;
//! `RedisStore::bounded` makes them.

use redis::aio::ConnectionManager;

/// Whether a call may be sent again (see [`RedisStore::bounded`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// When its connection was dropped before it could be answered.
    IfDropped,
    Never,
}

/// One Redis call: a command, a pipeline or a script.
pub(super) trait Call: Sync {
    fn send<T: redis::FromRedisValue + Send>(
        &self,
        connection: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + Send;
}

impl Call for redis::Cmd {
    async fn send<T: redis::FromRedisValue + Send>(
        &self,
        connection: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl Call for redis::Pipeline {
    async fn send<T: redis::FromRedisValue + Send>(
        &self,
        connection: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl Call for redis::ScriptInvocation<'_> {
    async fn send<T: redis::FromRedisValue + Send>(
        &self,
        connection: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.invoke_async(connection).await
    }
}
