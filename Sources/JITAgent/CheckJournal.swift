public import Foundation
public import JITCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The check path's audit events, appended to a file with one write(2) each before the reply is sent, and
/// moved into the hash-chained `audit` table in batches by a background thread. A check costs one append
/// instead of a database transaction; an event survives the agent being killed at any moment (it is in the
/// kernel's page cache once write returns, and the reply is sent after), and is ingested exactly once: the
/// batch and the journal position it reached are committed in one transaction.
///
/// Files are `checks.GEN.journal` next to the database. When the current file has been fully ingested and
/// has grown past `rotateBytes`, appends move to GEN+1 and the old file is removed once its last event is in.
///
/// Bounded work: the journal is read in chunks of `chunkBytes` (never the whole unread part), an ingest
/// stops at its deadline or when `abort()` is called (stop), and the rest waits for the next one. The unread
/// size is tracked (`backlogBytes`) so that callers can refuse what would only grow it (see `Engine.admitCheck`);
/// what is refused that way is counted per user and written as one `audit.events_dropped` event each.
public final class CheckJournal: Sendable {
    let dir: String
    let store: Store
    let rotateBytes: Int
    let chunkBytes: Int
    /// The file appends go to: generation and descriptor.
    let current: Mutex<(gen: Int64, fd: Int32)>
    /// Held for a whole ingest.
    let ingesting = Mutex<Void>(())
    /// Bytes appended and not yet ingested (exact at every catch-up; approximate in between).
    let backlog = Atomic<Int64>(0)
    /// Set at stop (milliseconds since 1970, 0: none): every ingest returns after the batch that passes it.
    let stopBy = Atomic<Int64>(0)
    /// Events not written (refused under a limit), by user and why, until they are recorded.
    let dropped = Mutex<[String: (count: Int, why: String)]>([:])

    public init(store: Store, rotateBytes: Int = 4 << 20, chunkBytes: Int = 1 << 20) throws(JITError) {
        self.store = store
        self.rotateBytes = rotateBytes
        // A line is at most one frame, percent-encoded: a chunk always holds at least one whole line.
        self.chunkBytes = max(chunkBytes, 3 * Wire.maxFrame + 4096)
        dir = (store.path as NSString).deletingLastPathComponent
        let start = try store.journalCursor()
        // Append to the newest generation present (or the cursor's).
        let gens = CheckJournal.generations(in: dir)
        let gen = max(start.gen, gens.max() ?? start.gen)
        var unread: Int64 = 0
        for g in gens where g >= start.gen {
            var st = stat()
            if stat(CheckJournal.path(dir, g), &st) == 0 { unread += Int64(st.st_size) - (g == start.gen ? start.offset : 0) }
        }
        backlog.store(max(0, unread), ordering: .relaxed)
        let fd = try CheckJournal.open(dir, gen)
        // A write cut short by a kill leaves a fragment without its newline: end it, so the next event
        // starts a line of its own (the fragment itself never parses, and was never answered).
        var size = stat()
        if fstat(fd, &size) == 0, size.st_size > 0, let last = CheckJournal.read(CheckJournal.path(dir, gen), at: Int64(size.st_size) - 1, max: 1).last, last != 10 {
            var nl: UInt8 = 10
            _ = write(fd, &nl, 1)
        }
        current = Mutex((gen, fd))
    }

    deinit { _ = current.withLock { close($0.fd) } }

    static func path(_ dir: String, _ gen: Int64) -> String { "\(dir)/checks.\(gen).journal" }

    static func generations(in dir: String) -> [Int64] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap { name in
            guard name.hasPrefix("checks."), name.hasSuffix(".journal") else { return nil }
            return Int64(name.dropFirst(7).dropLast(8))
        }
    }

    static func open(_ dir: String, _ gen: Int64) throws(JITError) -> Int32 {
        let fd = Glibc.open(path(dir, gen), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw JITError(.internal, "cannot open the check journal \(path(dir, gen)): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// One event, one line: fields percent-encoded (no tab or newline inside), separated by tabs.
    static func line(at: Date, kind: String, actor: String, user: String, requestID: Int64?, grantID: Int64?, data: [(String, String)]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        let fields = [String(Timestamps.millis(at)), kind, actor, user, requestID.map(String.init) ?? "", grantID.map(String.init) ?? "",
                      AuditChain.kv(data)]
        for (i, f) in fields.enumerated() {
            if i > 0 { out.append(9) }
            Message.percentEncode(f, into: &out)
        }
        out.append(10)
        return out
    }

    /// Appends one event; throws (and the check fails closed) when it cannot be written whole.
    public func append(at: Date, kind: String, actor: String, user: String, requestID: Int64?, grantID: Int64?, data: [(String, String)]) throws(JITError) {
        let bytes = CheckJournal.line(at: at, kind: kind, actor: actor, user: user, requestID: requestID, grantID: grantID, data: data)
        let ok = current.withLock { c -> Bool in
            bytes.withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) } == bytes.count
        }
        guard ok else { throw JITError(.internal, "the check journal in \(dir) could not be written (\(String(cString: strerror(errno))))") }
        backlog.add(Int64(bytes.count), ordering: .relaxed)
        store.appended.wake()
    }

    /// Bytes appended and not yet in the database.
    public var backlogBytes: Int64 { backlog.load(ordering: .relaxed) }

    /// Free bytes on the journal's file system (nil when unknown).
    public var freeBytes: Int64? {
        var v = statvfs()
        guard statvfs(dir, &v) == 0 else { return nil }
        return Int64(v.f_bavail) * Int64(v.f_frsize)
    }

    /// Counts an event that was refused instead of written; recorded at the next ingest.
    public func countDropped(user: String, why: String) {
        dropped.withLock { d in
            if d.count >= 10_000 && d[user] == nil {
                d["(others)", default: (0, why)].count += 1
            } else {
                d[user, default: (0, why)].count += 1
            }
        }
    }

    /// Writes one `audit.events_dropped` event per user with how many were refused; kept for the next try
    /// when the database cannot take them.
    func recordDropped() {
        let d = dropped.withLock { d in defer { d = [:] }; return d }
        for (user, v) in d.sorted(by: { $0.key < $1.key }) {
            do {
                try store.record("audit.events_dropped", actor: "jitd", user: user, data: [("count", String(v.count)), ("why", v.why)], at: Date())
            } catch {
                dropped.withLock { $0[user, default: (0, v.why)].count += v.count }
            }
        }
    }

    /// At stop: ingests (the one in progress, and this one) end within about `seconds`; what is left stays in
    /// the journal, where the next start ingests it in the background. Returns how many events it ingested.
    @discardableResult
    public func finish(within seconds: Double) -> Int {
        stopBy.store(Timestamps.millis(Date().addingTimeInterval(seconds)), ordering: .sequentiallyConsistent)
        return ingest()
    }

    /// Moves every complete journal line into the audit chain; returns how many events were ingested.
    /// One ingest at a time (the shipper thread and `jit audit` both call it): the journal position is read
    /// outside the write transaction, so two at once would ingest the same lines twice.
    /// `until`: stop after the batch that passes this time (the rest stays for the next ingest).
    @discardableResult
    public func ingest(until: Date? = nil) -> Int {
        ingesting.withLock { _ in
            let n = ingestLocked(until: until)
            recordDropped()
            return n
        }
    }

    func ingestLocked(until: Date?) -> Int {
        var total = 0
        do {
            while true {
                let cur = try store.journalCursor()
                let appendingGen = current.withLock { $0.gen }
                let path = CheckJournal.path(dir, cur.gen)
                // Only what follows the stored position is read, one bounded chunk at a time.
                let data = CheckJournal.read(path, at: cur.offset, max: chunkBytes)
                var events: [(Int64, String, String, String, Int64?, Int64?, String)] = []
                var consumed = 0
                var lineStart = 0
                var i = 0
                while i < data.count && events.count < 5000 {
                    if data[i] == 10 {
                        // A line that does not parse is a fragment cut short by a kill: never answered, skipped.
                        if let e = CheckJournal.parse(data[lineStart..<i]) { events.append(e) }
                        consumed = i + 1
                        lineStart = i + 1
                    }
                    i += 1
                }
                if consumed > 0 {
                    try store.ingestChecks(events, gen: cur.gen, offset: cur.offset + Int64(consumed))
                    backlog.subtract(Int64(consumed), ordering: .relaxed)
                    total += events.count
                    // Past the deadline (or the stop's): the rest waits for the next ingest.
                    let by = stopBy.load(ordering: .sequentiallyConsistent)
                    if by != 0 && Timestamps.millis(Date()) >= by { return total }
                    if let until, Date() >= until { return total }
                    continue
                }
                // Nothing new in this generation. Move on if appends already go to a newer one; rotate if big.
                if cur.gen < appendingGen {
                    try store.setJournalCursor(gen: cur.gen + 1, offset: 0)
                    backlog.subtract(Int64(data.count), ordering: .relaxed)
                    unlink(path)
                    continue
                }
                if cur.offset >= Int64(rotateBytes) && data.isEmpty {
                    try rotate(from: cur.gen)
                    continue
                }
                // Caught up: what is unread is exactly what follows the position in the file appends go to.
                current.withLock { c in
                    var st = stat()
                    if c.gen == cur.gen, fstat(c.fd, &st) == 0 { backlog.store(max(0, Int64(st.st_size) - cur.offset), ordering: .relaxed) }
                }
                return total
            }
        } catch {
            return total
        }
    }

    /// Starts a new generation for appends; the old one is removed once ingested (see `ingest`).
    func rotate(from gen: Int64) throws(JITError) {
        let fd = try CheckJournal.open(dir, gen + 1)
        current.withLock { c in
            if c.gen == gen {
                close(c.fd)
                c = (gen + 1, fd)
            } else {
                close(fd)
            }
        }
    }

    /// Up to `max` bytes of `path` from `offset` (empty when the file is missing).
    static func read(_ path: String, at offset: Int64, max: Int) -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: max)
        var got = 0
        while got < max {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, max - got, off_t(offset) + off_t(got)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        buf.removeLast(max - got)
        return buf
    }

    static func parse(_ line: ArraySlice<UInt8>) -> (Int64, String, String, String, Int64?, Int64?, String)? {
        let parts = line.split(separator: 9, omittingEmptySubsequences: false)
        guard parts.count == 7 else { return nil }
        func s(_ p: ArraySlice<UInt8>) -> String? { try? Message.percentDecode(p) }
        guard let atS = s(parts[0]), let at = Int64(atS), let kind = s(parts[1]), let actor = s(parts[2]), let user = s(parts[3]),
              let req = s(parts[4]), let grant = s(parts[5]), let data = s(parts[6]) else { return nil }
        return (at, kind, actor, user, Int64(req), Int64(grant), data)
    }
}
