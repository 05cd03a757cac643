public import Foundation
import GRDB
public import JITCore
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where sealing stands in the database, written in the same transaction as each seal and the setup event:
/// the seal (or setup) event, the last sealed epoch, the epoch the key moved to, and the setup.
struct SealCursor: Equatable {
    var event: Int64
    var epoch: Int64
    var next: Int64
    var setup: String
}

extension Store {
    static func setupBits(_ setup: String) -> Int64 { Int64(bitPattern: UInt64(setup, radix: 16) ?? 0) }

    func sealCursor() throws(JITError) -> SealCursor? {
        try read { db in
            var v: [String: Int64] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT name, last_id FROM audit_cursor WHERE name LIKE 'seal_%'") { v[r["name"]] = r["last_id"] }
            guard let event = v["seal_event"], let epoch = v["seal_epoch"], let next = v["seal_next"], let setup = v["seal_setup"] else { return nil }
            let hex = String(UInt64(bitPattern: setup), radix: 16)
            return SealCursor(event: event, epoch: epoch, next: next, setup: String(repeating: "0", count: max(0, 16 - hex.count)) + hex)
        }
    }

    static func putSealCursor(_ db: Database, _ c: SealCursor) throws {
        try putCursor(db, "seal_event", c.event)
        try putCursor(db, "seal_epoch", c.epoch)
        try putCursor(db, "seal_next", c.next)
        try putCursor(db, "seal_setup", setupBits(c.setup))
    }

    static func lastEventID(_ db: Database) throws -> Int64 { try Int64.fetchOne(db, sql: "SELECT max(id) FROM audit") ?? 0 }

    /// Records a new key's setup event; seals of this setup count events from it.
    func recordSealSetup(_ k: SealKey, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "INSERT INTO audit_in VALUES (?, ?, 'jitd', '', NULL, NULL, ?)", arguments: [
                Timestamps.millis(now), Sealing.setupKind,
                AuditChain.kv([("setup", k.setupID), ("start", Timestamps.format(k.begins(0))), ("interval", Durations.format(k.interval))]),
            ])
            try Store.putSealCursor(db, SealCursor(event: try Store.lastEventID(db), epoch: -1, next: 0, setup: k.setupID))
        }
    }

    /// Appends a seal over the head of the chain as it is inside this transaction: nothing can slip in
    /// between the head the seal names and the seal.
    func appendSeal(at now: Date, _ make: (_ headID: Int64, _ head: String, _ count: Int64) -> (Seal, String)) throws(JITError) -> (Seal, Int64) {
        try write { db in
            let head = try Store.head(db)
            let after = try Int64.fetchOne(db, sql: "SELECT last_id FROM audit_cursor WHERE name = 'seal_event'") ?? 0
            let count = try Int64.fetchOne(db, sql: "SELECT count(*) FROM audit WHERE id > ?", arguments: [after]) ?? 0
            let (seal, tag) = make(head.id, head.hash, count)
            try db.execute(sql: "INSERT INTO audit_in VALUES (?, ?, 'jitd', '', NULL, NULL, ?)",
                           arguments: [seal.at, Sealing.eventKind, AuditChain.kv(seal.pairs(tag: tag))])
            let id = try Store.lastEventID(db)
            try Store.putSealCursor(db, SealCursor(event: id, epoch: seal.epoch, next: seal.next, setup: seal.setup))
            return (seal, id)
        }
    }
}

/// jitd's side of forward-secure sealing: the key file, the seals, and the key's one-way evolution.
///
/// Crash safety. Closing epoch E: (1) the seal of E, naming the next epoch N, is committed; (2) key N is
/// written to `KEY.new` and fsynced; (3) the key file (key E) is overwritten with zeros and fsynced;
/// (4) `KEY.new` is renamed over it and the folder fsynced. After a SIGKILL at any point, start-up adopts
/// a valid `KEY.new` (destroying the old file first), and moves a key that is behind the database's last
/// seal forwards to the epoch that seal names: key E is never used again once its closing seal is in.
public final class AuditSealer: Sendable {
    let store: Store
    let clock: any JITClock
    let logger: Logger
    public let path: String
    let ingest: @Sendable () -> Void
    /// Tests only (debug builds): SIGKILL this process at a named step of key evolution (`JITD_TEST_CRASH`).
    let crashAt: String?
    struct State {
        var key: SealState?
        /// Why sealing is off although it was set up (said once per start, and by `status`).
        var off: String?
    }
    let state = Mutex(State(key: nil, off: nil))

    public init(store: Store, path: String, clock: any JITClock = SystemClock(), logger: Logger, ingest: @escaping @Sendable () -> Void = {}) {
        self.store = store
        self.path = path
        self.clock = clock
        self.logger = logger
        self.ingest = ingest
        #if DEBUG
        crashAt = ProcessInfo.processInfo.environment["JITD_TEST_CRASH"]
        #else
        crashAt = nil
        #endif
    }

    func crash(_ step: String) {
        if crashAt == step { kill(getpid(), SIGKILL) }
    }

    /// The key's setup and epoch, or why sealing is off.
    public var status: (setup: String, epoch: Int64)? { state.withLock { s in s.key.map { ($0.setup, $0.epoch) } } }
    public var offReason: String? { state.withLock { $0.off } }
    /// The epoch length the key was set up with.
    public var intervalInUse: Int64? { state.withLock { $0.key?.interval } }

    // MARK: start-up

    /// Recovers from a crash during evolution, adopts the key, and closes the epoch jitd was down in.
    public func start() {
        state.withLock { st in
            load(&st)
            if st.key != nil { sealLocked(&st, why: "resume", onlyIfClosing: true) }
        }
    }

    func load(_ st: inout State) {
        st.key = nil
        st.off = nil
        let db: SealCursor?
        do { db = try store.sealCursor() } catch {
            st.off = "the database cannot be read (\(error.message))"
            logger.error("audit: sealing is off: \(st.off!)")
            return
        }
        var main = AuditSealer.read(path)
        let n = AuditSealer.read(path + ".new")
        if let new = n.state, main.state == nil || new.setup != main.state!.setup || new.epoch > main.state!.epoch {
            // Evolution (or setup) was cut between writing the new key and renaming it into place.
            AuditSealer.destroy(path)
            AuditSealer.install(path + ".new", as: path)
            main = n
        } else if FileManager.default.fileExists(atPath: path + ".new") {
            AuditSealer.destroy(path + ".new")
            unlink(path + ".new")
        }
        guard let db else {
            if main.exists { st.off = "the key file \(path) belongs to no setup in this database; run jit audit setup-keys --force" }
            if let off = st.off { logger.error("audit: sealing is off: \(off)") }
            return
        }
        if let problem = main.problem {
            st.off = "sealing was set up (setup \(db.setup)) but \(problem); run jit audit setup-keys --force (seals made so far still verify with the old key)"
            logger.error("audit: sealing is off: \(st.off!)")
            audit("audit.seal_off", [("why", st.off!)])
            return
        }
        guard var key = main.state, key.setup == db.setup else {
            st.off = "the key file \(path) does not belong to the database's setup \(db.setup); run jit audit setup-keys --force"
            logger.error("audit: sealing is off: \(st.off!)")
            audit("audit.seal_off", [("why", st.off!)])
            return
        }
        if db.epoch >= key.epoch && db.epoch >= 0 && db.next > key.epoch {
            if db.epoch > key.epoch {
                // A key older than the last seal: the file was restored from a copy. Never seal with it.
                logger.error("audit: the sealing key file is at epoch \(key.epoch) but the trail is sealed through epoch \(db.epoch): it was restored from an old copy; moving it to epoch \(db.next)")
                audit("audit.seal_key_rollback", [("key_epoch", String(key.epoch)), ("sealed_epoch", String(db.epoch)), ("moved_to", String(db.next))])
            } else {
                logger.warning("audit: finishing a key evolution cut short: epoch \(key.epoch) was sealed, moving the key to epoch \(db.next)")
            }
            do { try evolve(&key, to: db.next) } catch {
                st.off = error.message
                logger.error("audit: sealing is off: \(error.message)")
                return
            }
        }
        st.key = key
    }

    func audit(_ kind: String, _ data: [(String, String)]) {
        do { try store.record(kind, actor: "jitd", user: "", data: data, at: clock.now()) } catch {
            logger.error("audit: could not record \(kind): \(error.message)")
        }
    }

    // MARK: setup

    /// Makes a fresh secret, records the setup in the trail, keeps epoch 0's key, and returns the
    /// verification key (the only time it exists outside the auditor's hands).
    public func setup(interval: Int64, force: Bool) throws(JITError) -> SealKey {
        try state.withLock { (st: inout State) throws(JITError) -> SealKey in
            if (st.key != nil || FileManager.default.fileExists(atPath: path)) && !force {
                throw JITError(.conflict, "sealing is already set up (\(path)); run jit audit setup-keys --force to replace the key (seals made so far still verify with the old key)")
            }
            guard interval >= 1 else { throw JITError(.invalid, "the seal interval must be at least 1s") }
            if st.key != nil { sealLocked(&st, why: "rekey", onlyIfClosing: false) }
            let now = clock.now()
            let k = SealKey.generate(start: Int64(now.timeIntervalSince1970.rounded(.down)), interval: interval)
            try store.recordSealSetup(k, at: now)
            let fresh = SealState(k)
            try AuditSealer.write(fresh, to: path + ".new")
            AuditSealer.destroy(path)
            AuditSealer.install(path + ".new", as: path)
            st.key = fresh
            st.off = nil
            logger.notice("audit: forward-secure sealing set up (setup \(k.setupID), epochs of \(Durations.format(interval))); key file \(path)")
            return k
        }
    }

    // MARK: sealing

    /// Seals the events so far. Mid-epoch (stop, archive, on demand) the key stays; once the epoch is over
    /// the seal closes it and the key moves on. Returns the seal and its event id (nil when sealing is off).
    @discardableResult
    public func seal(_ why: String) -> (Seal, Int64)? {
        state.withLock { st in sealLocked(&st, why: why, onlyIfClosing: false) }
    }

    /// Closes the epoch if it is over; returns when the current epoch ends (nil when sealing is off).
    @discardableResult
    public func tick() -> Date? {
        state.withLock { st in
            sealLocked(&st, why: "interval", onlyIfClosing: true)
            return st.key.map { $0.ends(max($0.epoch, $0.epoch(at: clock.now()))) }
        }
    }

    @discardableResult
    func sealLocked(_ st: inout State, why: String, onlyIfClosing: Bool) -> (Seal, Int64)? {
        guard var key = st.key else { return nil }
        let now = clock.now()
        let slot = key.epoch(at: now)
        let closing = slot > key.epoch
        if onlyIfClosing && !closing { return nil }
        ingest()
        let result: (Seal, Int64)
        do {
            result = try store.appendSeal(at: now) { headID, head, count in
                let s = Seal(setup: key.setup, epoch: key.epoch, next: closing ? slot : key.epoch, why: why, headID: headID, head: head,
                             count: count, at: Timestamps.millis(now))
                return (s, Sealing.tag(key: key.key, s))
            }
        } catch {
            logger.error("audit: sealing epoch \(key.epoch) failed: \(error.message); the events stay unsealed until the next seal")
            return nil
        }
        crash("seal-appended")
        if closing {
            do { try evolve(&key, to: slot) } catch {
                // The seal is in: the old key must not seal again. Stop sealing rather than reuse it.
                st.key = nil
                st.off = "moving the key to epoch \(slot) failed (\(error.message))"
                logger.error("audit: sealing is off: \(st.off!)")
                return result
            }
        }
        st.key = key
        return result
    }

    /// Moves the key forwards and destroys the old one, in the crash-safe order described above.
    func evolve(_ key: inout SealState, to epoch: Int64) throws(JITError) {
        var next = key.evolved(to: epoch)
        try AuditSealer.write(next, to: path + ".new")
        crash("new-key-written")
        AuditSealer.destroy(path)
        crash("old-key-destroyed")
        AuditSealer.install(path + ".new", as: path)
        for i in key.key.indices { key.key[i] = 0 }
        swap(&key, &next)
    }

    // MARK: the key file

    struct File {
        var exists: Bool
        var state: SealState?
        var problem: String?
    }

    static func read(_ path: String) -> File {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            return errno == ENOENT ? File(exists: false, state: nil, problem: "the key file \(path) is missing")
                : File(exists: true, state: nil, problem: "the key file \(path) cannot be read (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            return File(exists: true, state: nil, problem: "the key file \(path) is not a regular file")
        }
        guard st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else {
            return File(exists: true, state: nil, problem: "the key file \(path) is readable or writable by others (mode \(String(st.st_mode & 0o777, radix: 8)), owner \(st.st_uid)): it must be 0600 and jitd's")
        }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = Glibc.read(fd, &buf, buf.count)
        guard n > 0, let state = SealState.parse(String(decoding: buf.prefix(n), as: UTF8.self)) else {
            return File(exists: true, state: nil, problem: "the key file \(path) is damaged (overwritten or cut short)")
        }
        return File(exists: true, state: state, problem: nil)
    }

    static func write(_ s: SealState, to path: String) throws(JITError) {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JITError(.internal, "cannot write the sealing key \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(s.text.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count, fsync(fd) == 0 else {
            throw JITError(.internal, "cannot write the sealing key \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Overwrites a key file in place with zeros and fsyncs it: the old key is gone from the disk, not
    /// just unlinked.
    static func destroy(_ path: String) {
        let fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size > 0 else { return }
        let zeros = [UInt8](repeating: 0, count: Int(st.st_size))
        _ = zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        _ = fsync(fd)
    }

    static func install(_ from: String, as to: String) {
        _ = rename(from, to)
        let dir = (to as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}
