import Foundation
import JITCore
public import JITFleet
import PostgresNIO

/// Migration 3 (distribution) and every SQL statement of the grant stream and the central trail of host events.
///
/// `grant_changes` is written only by the trigger on `grants` (migration 2): one row per insert or
/// update, its body the grant as `FleetWire.Grant` JSON built in SQL. The trigger first takes a transaction
/// advisory lock, so versions become visible in commit order: a reader that saw version V has seen every
/// committed version below V, and a cursor never skips a row committed later with a smaller version.
extension FleetDatabase {
    /// The key of the advisory lock the grants trigger takes ("jitgrant").
    public static let changeLock: Int64 = 0x6a69_7467_7261_6e74

    static let streamMigration: [String] = [
        """
        CREATE TABLE grant_changes (
            version bigserial PRIMARY KEY,
            grant_id bigint NOT NULL,
            environment text NOT NULL,
            hosts text[] NOT NULL DEFAULT '{}',
            labels text[] NOT NULL DEFAULT '{}',
            body jsonb NOT NULL,
            at timestamptz NOT NULL DEFAULT now())
        """,
        "CREATE INDEX grant_changes_environment ON grant_changes (environment, version)",
        "CREATE INDEX grant_changes_grant ON grant_changes (grant_id, version)",
        "CREATE INDEX grant_changes_at ON grant_changes (at)",
        // The highest version pruning removed: a cursor below it may have missed a row, and gets a reset.
        "CREATE TABLE grant_changes_horizon (id integer PRIMARY KEY CHECK (id = 1), pruned_through bigint NOT NULL DEFAULT 0)",
        "INSERT INTO grant_changes_horizon (id, pruned_through) VALUES (1, 0)",
        """
        CREATE FUNCTION jit_grant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(\(changeLock));
            INSERT INTO grant_changes (grant_id, environment, hosts, labels, body)
            VALUES (NEW.id, NEW.environment, NEW.hosts, NEW.labels, jsonb_build_object(
                'id', NEW.id,
                'request_id', NEW.request_id,
                'user', NEW.user_name,
                'environment', NEW.environment,
                'hosts', to_jsonb(NEW.hosts),
                'labels', to_jsonb(NEW.labels),
                'scope', NEW.scope,
                'commands', CASE WHEN coalesce(NEW.commands, '') = '' THEN '[]'::jsonb
                                 ELSE to_jsonb(string_to_array(NEW.commands, E'\\n')) END,
                'run_as', coalesce(NEW.runas, ''),
                'state', NEW.state,
                'starts_at', to_char(NEW.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'expires_at', to_char(NEW.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'ended_at', to_char(NEW.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'ended_by', NEW.ended_by,
                'nopasswd', coalesce(NEW.nopasswd, false),
                'login', coalesce(NEW.login, false),
                'uses', NEW.uses,
                'record', coalesce(NEW.record, '')));
            PERFORM pg_notify('jit_changes', NEW.environment);
            RETURN NULL;
        END
        $$
        """,
        "CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE ON grants FOR EACH ROW EXECUTE FUNCTION jit_grant_changed()",
        // A host revoked, renewed or changed: its streams re-check who it is (payload: the host's name).
        """
        CREATE FUNCTION jit_host_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.cert_serial IS DISTINCT FROM OLD.cert_serial
               OR NEW.environment IS DISTINCT FROM OLD.environment OR NEW.labels IS DISTINCT FROM OLD.labels THEN
                PERFORM pg_notify('jit_hosts', NEW.name);
            END IF;
            RETURN NULL;
        END
        $$
        """,
        "CREATE TRIGGER hosts_changed AFTER UPDATE OF revoked_at, cert_serial, environment, labels ON hosts FOR EACH ROW EXECUTE FUNCTION jit_host_changed()",
        """
        CREATE TABLE host_events (
            host text NOT NULL,
            seq bigint NOT NULL,
            at timestamptz NOT NULL,
            kind text NOT NULL,
            actor text NOT NULL,
            user_name text NOT NULL,
            data jsonb NOT NULL DEFAULT '{}',
            received_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (host, seq))
        """,
        "CREATE INDEX host_events_at ON host_events (at)",
    ]
}

/// One row of `grant_changes`, its body decoded.
public struct GrantChange: Sendable, Equatable {
    public var version: Int64
    public var grant: FleetWire.Grant
    public init(version: Int64, grant: FleetWire.Grant) {
        self.version = version
        self.grant = grant
    }
}

extension FleetDatabase {
    /// What a stream read returns: the rows, the newest version committed when it read (`current`), and the
    /// highest version pruning has removed (`pruned`), all from one snapshot.
    struct ChangeRead: Sendable {
        var current: Int64
        var pruned: Int64
        var rows: [GrantChange]
    }

    private static let horizon = """
        SELECT greatest(coalesce((SELECT max(version) FROM grant_changes), 0), pruned_through) AS cur, pruned_through
        FROM grant_changes_horizon WHERE id = 1
        """

    private func changeRead(_ q: PostgresQuery, doing what: String) async throws(FleetError) -> ChangeRead {
        do {
            var out = ChangeRead(current: 0, pruned: 0, rows: [])
            let dec = JSONDecoder()
            for try await (cur, pruned, version, body) in try await client.query(q, logger: logger).decode((Int64, Int64, Int64?, String?).self) {
                out.current = cur
                out.pruned = pruned
                if let version, let body {
                    let g: FleetWire.Grant
                    do { g = try dec.decode(FleetWire.Grant.self, from: Data(body.utf8)) } catch {
                        throw FleetError("internal", "grant_changes version \(version) holds a body that is not a grant: \(error)")
                    }
                    out.rows.append(GrantChange(version: version, grant: g))
                }
            }
            return out
        } catch {
            throw failure(error, doing: what)
        }
    }

    /// The changes after `cursor` that concern the host `filter` describes (at most `limit`, in version order).
    func hostChanges(_ filter: StreamFilter, after cursor: Int64, limit: Int) async throws(FleetError) -> ChangeRead {
        let env = filter.environment, name = filter.name, labels = filter.labels
        return try await changeRead("""
            SELECT h.cur, h.pruned_through, c.version, c.body::text FROM (\(unescaped: Self.horizon)) h
            LEFT JOIN LATERAL (
                SELECT version, body FROM grant_changes
                WHERE version > \(cursor) AND environment = \(env) AND (cardinality(hosts) = 0 OR \(name) = ANY(hosts)) AND labels <@ \(labels)
                ORDER BY version LIMIT \(limit)) c ON true
            ORDER BY c.version
            """, doing: "reading the grant stream")
    }

    /// Every change of one environment after `cursor` (at most `limit`): what a replica caches and filters per
    /// host in memory, so that one notification costs one query however many hosts wait on it.
    func environmentChanges(_ environment: String, after cursor: Int64, limit: Int) async throws(FleetError) -> ChangeRead {
        try await changeRead("""
            SELECT h.cur, h.pruned_through, c.version, c.body::text FROM (\(unescaped: Self.horizon)) h
            LEFT JOIN LATERAL (
                SELECT version, body FROM grant_changes WHERE version > \(cursor) AND environment = \(environment)
                ORDER BY version LIMIT \(limit)) c ON true
            ORDER BY c.version
            """, doing: "reading the grant stream")
    }

    /// The grants active now that concern the host (the newest change of each grant, still active and not past
    /// its end), with the version they are current as of: the answer to a reset.
    func activeGrants(_ filter: StreamFilter, limit: Int) async throws(FleetError) -> ChangeRead {
        let env = filter.environment, name = filter.name, labels = filter.labels
        return try await changeRead("""
            SELECT h.cur, h.pruned_through, c.version, c.body::text FROM (\(unescaped: Self.horizon)) h
            LEFT JOIN LATERAL (
                SELECT version, body FROM (
                    SELECT DISTINCT ON (grant_id) version, hosts, labels, body FROM grant_changes
                    WHERE environment = \(env) ORDER BY grant_id, version DESC) latest
                WHERE body->>'state' = 'active' AND (body->>'expires_at')::timestamptz > now()
                  AND (cardinality(hosts) = 0 OR \(name) = ANY(hosts)) AND labels <@ \(labels)
                ORDER BY version LIMIT \(limit)) c ON true
            ORDER BY c.version
            """, doing: "reading the active grants")
    }

    /// Removes changes older than `retention` seconds, except the newest change of a grant that is still active
    /// (a reset is built from those). Raises the horizon so a cursor that may have missed a removed row gets a
    /// reset. Returns how many rows went.
    @discardableResult
    func pruneChanges(retention: Int64) async throws(FleetError) -> Int {
        let secs = Double(retention)
        do {
            var n = 0
            for try await (count) in try await client.query("""
                WITH gone AS (
                    DELETE FROM grant_changes c
                    WHERE c.at < now() - make_interval(secs => \(secs))
                      AND NOT (c.body->>'state' = 'active' AND (c.body->>'expires_at')::timestamptz > now() - make_interval(secs => \(secs))
                               AND c.version = (SELECT max(l.version) FROM grant_changes l WHERE l.grant_id = c.grant_id))
                    RETURNING version),
                up AS (
                    UPDATE grant_changes_horizon SET pruned_through = greatest(pruned_through, (SELECT coalesce(max(version), 0) FROM gone))
                    WHERE id = 1 RETURNING pruned_through)
                SELECT (SELECT count(*) FROM gone)::bigint FROM up
                """, logger: logger).decode(Int64.self)
            {
                n = Int(count)
            }
            return n
        } catch {
            throw failure(error, doing: "pruning old grant changes")
        }
    }

    /// Stores a host's events once each (`(host, seq)` is unique; a batch sent again adds nothing) and returns
    /// the highest seq now stored for that host.
    func storeEvents(host: String, _ events: [CheckedEvent]) async throws(FleetError) -> Int64 {
        let seqs = events.map(\.seq), ats = events.map(\.at), kinds = events.map(\.kind), actors = events.map(\.actor)
        let users = events.map(\.user), datas = events.map(\.data)
        do {
            if !events.isEmpty {
                try await client.query("""
                    INSERT INTO host_events (host, seq, at, kind, actor, user_name, data)
                    SELECT \(host), e.seq, e.at::timestamptz, e.kind, e.actor, e.u, e.d::jsonb
                    FROM unnest(\(seqs)::bigint[], \(ats)::text[], \(kinds)::text[], \(actors)::text[], \(users)::text[], \(datas)::text[]) AS e(seq, at, kind, actor, u, d)
                    ON CONFLICT (host, seq) DO NOTHING
                    """, logger: logger)
            }
            var acked: Int64 = 0
            for try await m in try await client.query("SELECT coalesce(max(seq), 0)::bigint FROM host_events WHERE host = \(host)", logger: logger).decode(Int64.self) {
                acked = m
            }
            return acked
        } catch {
            throw failure(error, doing: "storing the host's events")
        }
    }

    /// The rows of the named hosts (for re-checking waiting streams after the listener was away).
    func hostsNamed(_ names: [String]) async throws(FleetError) -> [HostRecord] {
        do {
            return try await hosts(try await client.query("SELECT \(unescaped: Self.hostColumns) FROM hosts WHERE name = ANY(\(names))", logger: logger))
        } catch {
            throw failure(error, doing: "re-checking waiting hosts")
        }
    }
}
