extension PostgresStore {
    /// Migration 2 — decisions (docs/FLEET.md, "The wire and the tables of slice 2"): the SQLite store's
    /// `requests`, `approvals`, `grants` and `mfa`, with the fleet's columns. The grants columns are read by
    /// migration 3's trigger (the grant stream): keep their names and types.
    static let schema: [String] = [
        """
        CREATE TABLE requests (
            id bigserial PRIMARY KEY,
            user_name text NOT NULL,
            uid bigint NOT NULL,
            environment text NOT NULL,
            scope text NOT NULL CHECK (scope IN ('login', 'sudo', 'commands')),
            commands text NOT NULL DEFAULT '',
            runas text NOT NULL,
            duration bigint NOT NULL CHECK (duration > 0),
            reason text NOT NULL,
            state text NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'cancelled', 'expired')),
            created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            decided_at timestamptz,
            decided_by text,
            comment text,
            rule text NOT NULL DEFAULT 'default',
            rhost text NOT NULL DEFAULT '',
            service text NOT NULL DEFAULT '',
            approved_via text CHECK (approved_via IN ('approvers', 'auto', 'break-glass')),
            ticket text,
            extends bigint,
            escalated integer NOT NULL DEFAULT 1,
            uses integer CHECK (uses IS NULL OR uses > 0),
            record text NOT NULL DEFAULT '',
            hosts text[] NOT NULL DEFAULT '{}',
            labels text[] NOT NULL DEFAULT '{}',
            filed_by_host text,
            host_seq bigint,
            UNIQUE (filed_by_host, host_seq))
        """,
        "CREATE INDEX requests_pending ON requests (state, expires_at)",
        "CREATE INDEX requests_user ON requests (user_name, state)",
        """
        CREATE TABLE approvals (
            request_id bigint NOT NULL REFERENCES requests (id),
            approver text NOT NULL,
            at timestamptz NOT NULL,
            comment text,
            groups text NOT NULL DEFAULT '',
            mfa boolean NOT NULL DEFAULT false,
            PRIMARY KEY (request_id, approver))
        """,
        """
        CREATE TABLE grants (
            id bigserial PRIMARY KEY,
            request_id bigint NOT NULL UNIQUE REFERENCES requests (id),
            user_name text NOT NULL,
            uid bigint NOT NULL,
            environment text NOT NULL,
            hosts text[] NOT NULL DEFAULT '{}',
            labels text[] NOT NULL DEFAULT '{}',
            scope text NOT NULL,
            commands text NOT NULL DEFAULT '',
            runas text NOT NULL,
            state text NOT NULL CHECK (state IN ('active', 'expired', 'revoked', 'used')),
            starts_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            ended_at timestamptz,
            ended_by text,
            nopasswd boolean NOT NULL DEFAULT true,
            login boolean NOT NULL DEFAULT true,
            uses integer CHECK (uses IS NULL OR uses > 0),
            uses_left integer CHECK (uses_left IS NULL OR uses_left >= 0),
            record text NOT NULL DEFAULT '')
        """,
        "ALTER TABLE requests ADD CONSTRAINT requests_extends_fkey FOREIGN KEY (extends) REFERENCES grants (id)",
        "CREATE INDEX grants_active ON grants (state, expires_at)",
        "CREATE INDEX grants_user ON grants (user_name, state)",
        """
        CREATE TABLE mfa (
            user_name text PRIMARY KEY,
            secret text NOT NULL,
            created_at timestamptz NOT NULL,
            last_step bigint NOT NULL DEFAULT 0,
            failures integer NOT NULL DEFAULT 0,
            failed_at timestamptz NOT NULL DEFAULT 'epoch')
        """,
    ]
}
