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
public final class CheckJournal: Sendable {
    let dir: String
    let store: Store
    let rotateBytes: Int
    /// The file appends go to: generation and descriptor.
    let current: Mutex<(gen: Int64, fd: Int32)>
    /// Held for a whole ingest.
    let ingesting = Mutex<Void>(())

    public init(store: Store, rotateBytes: Int = 4 << 20) throws(JITError) {
        self.store = store
        self.rotateBytes = rotateBytes
        dir = (store.path as NSString).deletingLastPathComponent
        let start = try store.journalCursor()
        // Append to the newest generation present (or the cursor's).
        let gens = CheckJournal.generations(in: dir)
        let gen = max(start.gen, gens.max() ?? start.gen)
        let fd = try CheckJournal.open(dir, gen)
        // A write cut short by a kill leaves a fragment without its newline: end it, so the next event
        // starts a line of its own (the fragment itself never parses, and was never answered).
        if let data = FileManager.default.contents(atPath: CheckJournal.path(dir, gen)), let last = data.last, last != 10 {
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
        store.appended.wake()
    }

    /// Moves every complete journal line into the audit chain; returns how many events were ingested.
    /// One ingest at a time (the shipper thread and `jit audit` both call it): the journal position is read
    /// outside the write transaction, so two at once would ingest the same lines twice.
    @discardableResult
    public func ingest() -> Int {
        ingesting.withLock { _ in ingestLocked() }
    }

    func ingestLocked() -> Int {
        var total = 0
        do {
            while true {
                let cur = try store.journalCursor()
                let appendingGen = current.withLock { $0.gen }
                let path = CheckJournal.path(dir, cur.gen)
                // Only what follows the stored position is read.
                var data = Data()
                if let fh = FileHandle(forReadingAtPath: path) {
                    defer { try? fh.close() }
                    try? fh.seek(toOffset: UInt64(cur.offset))
                    data = (try? fh.readToEnd()) ?? Data()
                }
                var events: [(Int64, String, String, String, Int64?, Int64?, String)] = []
                var consumed = 0
                data.withUnsafeBytes { raw in
                    let b = raw.bindMemory(to: UInt8.self)
                    var lineStart = 0
                    var i = 0
                    while i < b.count && events.count < 5000 {
                        if b[i] == 10 {
                            // A line that does not parse is a fragment cut short by a kill: never answered, skipped.
                            if let e = CheckJournal.parse(Array(b[lineStart..<i])) { events.append(e) }
                            consumed = i + 1
                            lineStart = i + 1
                        }
                        i += 1
                    }
                }
                if consumed > 0 {
                    try store.ingestChecks(events, gen: cur.gen, offset: cur.offset + Int64(consumed))
                    total += events.count
                    continue
                }
                // Nothing new in this generation. Move on if appends already go to a newer one; rotate if big.
                if cur.gen < appendingGen {
                    try store.setJournalCursor(gen: cur.gen + 1, offset: 0)
                    unlink(path)
                    continue
                }
                if cur.offset >= Int64(rotateBytes) && data.isEmpty {
                    try rotate(from: cur.gen)
                    continue
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

    static func parse(_ line: [UInt8]) -> (Int64, String, String, String, Int64?, Int64?, String)? {
        let parts = line.split(separator: 9, omittingEmptySubsequences: false)
        guard parts.count == 7 else { return nil }
        func s(_ p: ArraySlice<UInt8>) -> String? { try? Message.percentDecode(p) }
        guard let atS = s(parts[0]), let at = Int64(atS), let kind = s(parts[1]), let actor = s(parts[2]), let user = s(parts[3]),
              let req = s(parts[4]), let grant = s(parts[5]), let data = s(parts[6]) else { return nil }
        return (at, kind, actor, user, Int64(req), Int64(grant), data)
    }
}
