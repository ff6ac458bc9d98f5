//! The file-descriptor limit: raised at start, and the connection cap fitted to it.

/// Descriptors the process needs besides its HTTP connections and database connections:
/// standard streams, the listener, the runtime's own, Redis, the JWKS client, files.
const FD_RESERVE: u64 = 32;

/// What the file-descriptor limit allows, found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit in force after trying to raise it to the hard limit.
    pub limit: u64,
    /// The hard limit.
    pub hard: u64,
    /// What the configuration needs: `max_connections` plus the database's and a reserve.
    pub needed: u64,
    /// The connection cap to serve with: `max_connections`, or less when the limit is short.
    pub max_connections: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and compares it with what the
/// configuration needs: `max_connections` connections, `database_fds` for the pool, and a
/// reserve. When the limit is still short, the connection cap is lowered to fit (logged
/// as a warning): running out of descriptors also fails database connections and Redis
/// reconnects, not just accepts.
pub fn fit_descriptor_limit(max_connections: usize, database_fds: u64) -> Descriptors {
    let reserve = FD_RESERVE + database_fds;
    let needed = max_connections as u64 + reserve;
    let unknown = Descriptors {
        limit: u64::MAX,
        hard: u64::MAX,
        needed,
        max_connections,
    };
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return unknown;
    };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open):
    // ask for what is needed then.
    let target = if hard == rlimit::INFINITY {
        needed.max(soft)
    } else {
        hard
    };
    let limit = match rlimit::increase_nofile_limit(target) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::debug!(error = %e, soft, hard, "could not raise the file-descriptor limit");
            soft
        }
    };
    if limit > soft {
        tracing::info!(
            from = soft,
            to = limit,
            "raised the file-descriptor limit (soft) to the hard limit"
        );
    }
    if limit >= needed {
        return Descriptors {
            limit,
            hard,
            needed,
            max_connections,
        };
    }
    let fit = usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    tracing::warn!(
        limit,
        hard,
        needed,
        max_connections,
        serving_at_most = fit,
        "the file-descriptor limit is below what server.max_connections needs: serving at \
         most {fit} connections at once; raise `ulimit -n` (LimitNOFILE= in systemd, \
         --ulimit nofile= in docker) to at least {needed}, or lower server.max_connections"
    );
    Descriptors {
        limit,
        hard,
        needed,
        max_connections: fit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_raised_and_the_cap_fits_it() {
        let d = fit_descriptor_limit(10, 4);
        assert_eq!(d.needed, 10 + 4 + FD_RESERVE);
        if d.limit >= d.needed {
            assert_eq!(d.max_connections, 10);
        }
        let huge = fit_descriptor_limit(usize::MAX / 2, 0);
        assert!(huge.max_connections < usize::MAX / 2 || huge.limit == u64::MAX);
    }
}
