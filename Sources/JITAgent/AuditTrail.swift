import CJITSys
public import Foundation
public import JITCore
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Ships the audit trail out of the database: every event to syslog as RFC 5424 with structured data (so a
/// SIEM or journald pipeline gets it with no extra agent), the chain's head hash at intervals (an outside
/// copy that a rewrite of the whole chain cannot match), and old events to compressed archives.
public final class AuditTrail: Sendable {
    public let store: Store
    let settings: Mutex<AuditSettings>
    let logger: Logger
    let clock: any JITClock
    let archiveDir: String
    /// One shipper at a time: the thread and the final flush at stop never send an event twice.
    let shipping = Mutex<Void>(())
    let hostname: String

    public init(store: Store, settings: AuditSettings, clock: any JITClock = SystemClock(), logger: Logger) {
        self.store = store
        self.settings = Mutex(settings)
        self.logger = logger
        self.clock = clock
        archiveDir = settings.archiveDir ?? ((store.path as NSString).deletingLastPathComponent + "/audit")
        var buf = [UInt8](repeating: 0, count: 256)
        gethostname(&buf, 255)
        hostname = String(decoding: buf.prefix { $0 != 0 }, as: UTF8.self)
    }

    public func update(_ s: AuditSettings) { settings.withLock { $0 = s } }

    // MARK: syslog

    /// RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`, facility authpriv, severity notice.
    public func syslogLine(_ e: AuditEvent) -> String {
        func sd(_ v: String) -> String {
            var o = ""
            for ch in v.unicodeScalars {
                switch ch {
                case "\"", "\\", "]": o += "\\" + String(ch)
                case _ where ch.value < 0x20 || ch.value == 0x7f: o += "?"
                default: o.unicodeScalars.append(ch)
                }
            }
            return o
        }
        func name(_ k: String) -> String { String(k.filter { $0.isASCII && $0 != "=" && $0 != "]" && $0 != "\"" && $0 != " " }.prefix(32)) }
        var params = "id=\"\(e.id)\" actor=\"\(sd(e.actor))\" user=\"\(sd(e.user))\""
        if let r = e.requestID { params += " request=\"\(r)\"" }
        if let g = e.grantID { params += " grant=\"\(g)\"" }
        for (k, v) in e.pairs { params += " \(name(k))=\"\(sd(v))\"" }
        params += " hash=\"\(e.hash)\""
        let ts = Timestamps.format(e.date)
        let msgid = String(e.kind.filter { $0.isASCII && !$0.isWhitespace }.prefix(32))
        return "<85>1 \(ts) \(hostname) jitd \(getpid()) \(msgid) [jit@32473 \(params)] \(sd(e.kind)) by \(sd(e.actor)) for \(sd(e.user))"
    }

    /// Sends one datagram to the syslog socket; false when it is not there or refuses.
    func send(_ line: String, to path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        guard Server.fill(&addr, path) else { return false }
        let bytes = Array(line.utf8)
        let n = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        return n == bytes.count
    }

    /// Sends every event after the syslog cursor; the cursor only moves past what was sent.
    /// `until`: stop after the batch that passes this time (the cursor keeps the rest for later).
    public func ship(until: Date? = nil) {
        shipping.withLock { _ in shipLocked(until: until) }
    }

    func shipLocked(until: Date?) {
        let s = settings.withLock { $0 }
        guard s.syslog else { return }
        do {
            var after = try store.cursor("syslog")
            if after == nil {
                // First run: start from the events the agent keeps now.
                after = try store.events(Store.AuditQuery(limit: 1)).first.map { $0.id - 1 } ?? 0
            }
            while until.map({ Date() < $0 }) ?? true {
                let batch = try store.events(Store.AuditQuery(after: after, limit: 500))
                if batch.isEmpty { return }
                var last = after!
                for e in batch {
                    guard send(syslogLine(e), to: s.syslogSocket) else {
                        if last != after! { try store.setCursor("syslog", last) }
                        return
                    }
                    last = e.id
                }
                try store.setCursor("syslog", last)
                after = last
            }
        } catch {
            logger.error("audit: shipping to syslog failed: \(error.message)")
        }
    }

    /// Writes the chain's head to syslog (and the agent's log).
    public func announceHead() {
        do {
            let head = try store.auditHead()
            let line = "<85>1 \(Timestamps.format(clock.now())) \(hostname) jitd \(getpid()) audit.head [jit@32473 id=\"\(head.id)\" hash=\"\(head.hash)\"] audit chain head \(head.id) \(head.hash)"
            let s = settings.withLock { $0 }
            if s.syslog { _ = send(line, to: s.syslogSocket) }
            logger.notice("audit chain head: event \(head.id) hash \(head.hash)")
        } catch {
            logger.error("audit: reading the head failed: \(error.message)")
        }
    }

    // MARK: archives

    /// Archives events older than the retention age to `audit-FIRST-LAST.jsonl.gz` and removes them from the
    /// live database, leaving an anchor so the live chain still verifies. Returns the file, if one was written.
    /// With sealing on, an archive ends at a seal (the last one before the cutoff), so every archived event
    /// is sealed and the live trail starts right after a seal; a seal is made first when there is anything
    /// to archive.
    @discardableResult
    public func archive(sealer: AuditSealer? = nil) -> String? {
        guard let retention = settings.withLock({ $0.retention }) else { return nil }
        let cutoff = clock.now().addingTimeInterval(-Double(retention))
        if let sealer, sealer.status != nil, let first = try? store.events(Store.AuditQuery(limit: 1)).first, first.date < cutoff {
            sealer.seal("archive")
        }
        do {
            var events: [AuditEvent] = []
            var after: Int64? = nil
            outer: while events.count < 1_000_000 {
                let batch = try store.events(Store.AuditQuery(after: after, limit: 5000))
                if batch.isEmpty { break }
                for e in batch {
                    if e.date >= cutoff { break outer }
                    events.append(e)
                }
                after = batch.last!.id
            }
            if let sealer, sealer.status != nil {
                events = Array(events.prefix((events.lastIndex { $0.kind == Sealing.eventKind } ?? -1) + 1))
            }
            guard let first = events.first, let last = events.last else { return nil }
            try FileManager.default.createDirectory(atPath: archiveDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let path = "\(archiveDir)/audit-\(first.id)-\(last.id).jsonl.gz"
            var text = ""
            for e in events { text += AuditArchive.line(e) + "\n" }
            let bytes = Array(text.utf8)
            let rc = bytes.withUnsafeBytes { cjit_gz_write_new(path, $0.baseAddress, $0.count) }
            guard rc == 0 else {
                logger.error("audit: could not write the archive \(path): \(String(cString: strerror(errno))); nothing was removed")
                return nil
            }
            try store.cutAudit(through: last.id, hash: last.hash, file: path, count: Int64(events.count), at: clock.now())
            logger.notice("audit: archived events \(first.id)-\(last.id) to \(path)")
            return path
        } catch {
            logger.error("audit: archiving failed: \(error)")
            return nil
        }
    }
}

/// The archive format: one JSON object per event, every field the hash covers, in id order, gzip-compressed.
public enum AuditArchive {
    struct Line: Codable {
        var id: Int64
        var at: Int64
        var kind: String
        var actor: String
        var user: String
        var request_id: Int64?
        var grant_id: Int64?
        var data: String
        var prev_hash: String
        var hash: String
    }

    public static func line(_ e: AuditEvent) -> String {
        let l = Line(id: e.id, at: e.at, kind: e.kind, actor: e.actor, user: e.user, request_id: e.requestID, grant_id: e.grantID,
                     data: e.data, prev_hash: e.prevHash, hash: e.hash)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? enc.encode(l)) ?? Data(), as: UTF8.self)
    }

    /// Verifies an archive file on its own: contiguous ids, every hash, every link. Returns the walk; the
    /// walk starts from the archive's own first `prev_hash`, which must equal the previous anchor's hash.
    static func contents(_ path: String) throws(JITError) -> Data {
        var buf: UnsafeMutablePointer<CChar>? = nil
        var len = 0
        guard cjit_gz_read(path, 4 << 30, &buf, &len) == 0, let buf else {
            throw JITError(.notFound, "cannot read the archive \(path): \(String(cString: strerror(errno)))")
        }
        defer { free(buf) }
        return Data(bytes: buf, count: len)
    }

    static func event(_ l: Line) -> AuditEvent {
        AuditEvent(id: l.id, at: l.at, kind: l.kind, actor: l.actor, user: l.user, requestID: l.request_id, grantID: l.grant_id,
                   data: l.data, prevHash: l.prev_hash, hash: l.hash)
    }

    /// Every event of an archive in order; throws, naming the file and line, at a line that is not a record.
    public static func events(path: String) throws(JITError) -> [AuditEvent] {
        let dec = JSONDecoder()
        var out: [AuditEvent] = []
        for (i, raw) in try contents(path).split(separator: 10).enumerated() where !raw.isEmpty {
            guard let l = try? dec.decode(Line.self, from: Data(raw)) else {
                throw JITError(.invalid, "the archive \(path) line \(i + 1) is not a valid archive record (after event \(out.last?.id ?? 0))")
            }
            out.append(event(l))
        }
        return out
    }

    public static func verify(path: String) throws(JITError) -> AuditChain.Walk {
        let data = try contents(path)
        var walk: AuditChain.Walk? = nil
        let dec = JSONDecoder()
        for raw in data.split(separator: 10) where !raw.isEmpty {
            guard let l = try? dec.decode(Line.self, from: Data(raw)) else {
                var w = walk ?? AuditChain.Walk()
                w.problem = "a line after event \(w.lastID) is not a valid archive record"
                w.badID = w.lastID + 1
                return w
            }
            let e = event(l)
            if walk == nil { walk = AuditChain.Walk(anchorID: e.id - 1, anchorHash: e.prevHash) }
            if !walk!.step(e) { return walk! }
        }
        return walk ?? AuditChain.Walk()
    }
}
