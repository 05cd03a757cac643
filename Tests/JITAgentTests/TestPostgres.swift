import Foundation
import JITCore
import JITServer
import JITSudoers
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A throw-away PostgreSQL cluster for the tests of the PostgreSQL store: `initdb` in a temp folder (run as
/// `postgres`, which initdb needs), on a free loopback port, trust auth, started once per test process and
/// removed at exit. `JIT_TEST_PG_PORT` points at a running one instead. As root (CI) a cluster that cannot
/// start is a failure; not as root, the PostgreSQL cases say why they are skipped.
enum TestPostgres {
    struct Cluster: Sendable {
        let dir: String
        let port: Int
    }

    static let cluster: Result<Cluster, JITError> = start()

    /// A fresh migrated database on the shared cluster; nil (and a note) when PostgreSQL cannot run here and
    /// we are not root. As root it must run: the failure is thrown.
    static func freshDatabase() async throws -> Database? {
        switch cluster {
        case .success(let c): return try await Database(c)
        case .failure(let e):
            if geteuid() == 0 { throw e }
            print("note: \(e.message)")
            return nil
        }
    }
    nonisolated(unsafe) static var started: Cluster?

    static func start() -> Result<Cluster, JITError> {
        if let p = ProcessInfo.processInfo.environment["JIT_TEST_PG_PORT"], let port = Int(p) {
            return .success(Cluster(dir: "", port: port))
        }
        guard geteuid() == 0 else {
            return .failure(JITError(.unauthorized, "PostgreSQL store tests skipped: not root (initdb runs as 'postgres' through runuser); run as root or set JIT_TEST_PG_PORT"))
        }
        let bins = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).sorted().map { "/usr/lib/postgresql/\($0)/bin" }
        guard let bin = bins.last(where: { FileManager.default.fileExists(atPath: $0 + "/initdb") }) else {
            return .failure(JITError(.internal, "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/deps.sh"))
        }
        var template = Array("/tmp/jit-pg-test-XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { return .failure(JITError(.internal, "mkdtemp failed")) }
        let dir = String(cString: d)
        guard let pw = getpwnam("postgres") else { return .failure(JITError(.internal, "there is no 'postgres' user: run scripts/deps.sh")) }
        chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
        chmod(dir, 0o755)
        let port = freePort()
        let asPG = ["/usr/sbin/runuser", "-u", "postgres", "--"]
        if let e = run(asPG + [bin + "/initdb", "-D", dir + "/data", "-A", "trust", "-U", "postgres", "--no-sync"]) { return .failure(e) }
        if let e = run(asPG + [bin + "/pg_ctl", "-D", dir + "/data", "-l", dir + "/log", "-w", "-t", "30", "-o",
                               "-k \(dir) -c listen_addresses=127.0.0.1 -p \(port) -c fsync=off -c max_connections=200", "start"]) {
            return .failure(e)
        }
        let c = Cluster(dir: dir, port: port)
        started = c
        atexit {
            guard let c = TestPostgres.started else { return }
            let bins = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).sorted()
            if let v = bins.last {
                _ = TestPostgres.run(["/usr/sbin/runuser", "-u", "postgres", "--", "/usr/lib/postgresql/\(v)/bin/pg_ctl", "-D", c.dir + "/data", "-m", "immediate", "-w", "stop"])
            }
            try? FileManager.default.removeItem(atPath: c.dir)
        }
        return .success(c)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// Runs a command to its end; nil when it exited 0, else an error with its output. Through a shell that
    /// sends the output to a file: the server pg_ctl starts keeps its descriptors, so a pipe would never end.
    static func run(_ argv: [String]) -> JITError? {
        let log = "/tmp/jit-pg-run-\(UUID().uuidString.prefix(8)).log"
        defer { unlink(log) }
        let quoted = argv.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let r = Posix.run("/bin/sh", ["-c", "exec \(quoted) >\(log) 2>&1"], timeout: 120)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return r.status == 0 ? nil : JITError(.internal, "\(argv.joined(separator: " ")) failed: \(r.output)\(text)")
    }

    /// A fresh database on the cluster, migrated; its clients run until `close`.
    final class Database: Sendable {
        let config: ServerConfig
        let runs = Mutex<[Task<Void, Never>]>([])

        init(_ c: Cluster) async throws {
            let name = "jit_t_" + UUID().uuidString.prefix(8).lowercased()
            var cfg = ServerConfig()
            cfg.database.host = "127.0.0.1"
            cfg.database.port = c.port
            cfg.database.user = "postgres"
            cfg.database.name = "postgres"
            let admin = try FleetDatabase(config: cfg, logger: Logger(label: "test"))
            let t = admin.startOffPool()
            defer { t.cancel() }
            try await admin.client.query("CREATE DATABASE \(unescaped: name)")
            cfg.database.name = name
            config = cfg
        }

        /// A new store with its own connection pool (another "replica").
        func store() async throws -> PostgresStore {
            let db = try FleetDatabase(config: config, logger: Logger(label: "test"))
            let t = db.startOffPool()
            runs.withLock { $0.append(t) }
            try await db.migrate()
            return PostgresStore(db: db, logger: Logger(label: "test"))
        }

        func close() { runs.withLock { for t in $0 { t.cancel() } } }
    }
}

/// Runs blocking work (the synchronous store protocol) on a thread of its own, never on the cooperative pool.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (k: CheckedContinuation<T, any Error>) in
        let t = Thread { k.resume(with: Result { try body() }) }
        t.stackSize = 1 << 20
        t.start()
    }
}
