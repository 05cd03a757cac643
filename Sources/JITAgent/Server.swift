import Foundation
import CJITSys
public import JITCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The Unix socket server. Plain POSIX sockets, one worker thread per open connection (workers are kept
/// and reused, so a check costs no thread creation): a PAM check is one short
/// request and reply, so blocking I/O bounded by poll() is the simplest correct design and costs no event
/// loop hop (see README, "Why plain sockets"). A waiting client parks its thread in poll() on its socket
/// and an eventfd that the decision itself pokes. Every read and write has a deadline; connections are
/// capped overall and per peer uid, and waits are capped per user they are about (the module inside sudo
/// or sshd connects as root, so the peer says nothing about whose wait it is), per request and in all, to
/// half the connections: the other half is always there for quick checks and commands, so one user's
/// flood never denies another user, an approver's `jit`, or an ungated user (`limits:` in jit.yaml).
public final class Server: Sendable {
    public let engine: Engine
    public let path: String
    /// Fixed caps for tests; nil: `limits:` from the engine's config (reloaded with it).
    let fixedLimits: LimitSettings?
    var limits: LimitSettings { fixedLimits ?? engine.config.limits }
    public var maxConnections: Int { limits.connections }
    public var maxPerUser: Int { limits.connectionsPerUser }
    /// How long a client may take to send a frame it started, and to receive a reply.
    public let ioTimeout: Double
    /// How long an idle connection may sit between frames.
    public let idleTimeout: Double
    let listenFD = Atomic<Int32>(-1)
    let stopping = Atomic<Bool>(false)
    let open = Mutex<(total: Int, perUID: [UInt32: Int])>((0, [:]))
    /// Accepted connections waiting for a worker, and how many workers wait for one.
    let jobs = Mutex<(fds: [(Int32, UInt32)], idle: Int)>(([], 0))
    let jobSignal = DispatchSemaphore(value: 0)
    /// Waiting clients: by the user the wait is about, by request, and in all.
    let waiting = Mutex<(total: Int, perUser: [String: Int], perRequest: [Int64: Int], logged: Set<Int64>)>((0, [:], [:], []))

    public init(engine: Engine, path: String, limits: LimitSettings? = nil, ioTimeout: Double = 5, idleTimeout: Double = 30) {
        self.engine = engine
        self.path = path
        self.fixedLimits = limits
        self.ioTimeout = ioTimeout
        self.idleTimeout = idleTimeout
    }

    /// Creates the socket folder (0755) and the socket (0666). Refuses to take over a live agent's socket
    /// or a path that is not a socket.
    public func bind() throws(JITError) {
        let dir = (path as NSString).deletingLastPathComponent
        var st = stat()
        if lstat(dir, &st) != 0 {
            guard mkdir(dir, 0o755) == 0 || errno == EEXIST else {
                throw JITError(.internal, "cannot create the socket folder \(dir): \(String(cString: strerror(errno))); set 'socket' in the config or use --socket")
            }
            chmod(dir, 0o755)
        } else if (st.st_mode & S_IFMT) != S_IFDIR {
            throw JITError(.internal, "\(dir) is not a folder; set 'socket' in the config or use --socket")
        }
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw JITError(.internal, "\(path) exists and is not a socket; remove it or set 'socket' to another path")
            }
            if Server.someoneListens(path) {
                throw JITError(.internal, "another jitd is already listening on \(path); stop it first or use --socket")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw JITError(.internal, "socket(): \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        guard Server.fill(&addr, path) else {
            close(fd)
            throw JITError(.internal, "the socket path \(path) is longer than 107 bytes; choose a shorter 'socket' path")
        }
        let old = umask(0o111)
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(old)
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw JITError(.internal, "cannot bind \(path): \(e)")
        }
        chmod(path, 0o666)
        guard listen(fd, 512) == 0 else {
            close(fd)
            throw JITError(.internal, "listen on \(path): \(String(cString: strerror(errno)))")
        }
        listenFD.store(fd, ordering: .sequentiallyConsistent)
    }

    static func fill(_ addr: inout sockaddr_un, _ path: String) -> Bool {
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return true
    }

    static func someoneListens(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        guard fill(&addr, path) else { return false }
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    /// Accepts connections until `stop()`. Each connection runs on its own thread.
    public func serve() {
        let lfd = listenFD.load(ordering: .sequentiallyConsistent)
        precondition(lfd >= 0, "bind() first")
        while !stopping.load(ordering: .sequentiallyConsistent) {
            var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 500)
            if r <= 0 { continue }
            let cfd = cjit_accept(lfd)
            if cfd < 0 { continue }
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            guard cjit_peercred(cfd, &pid, &uid, &gid) == 0 else { close(cfd); continue }
            let l = limits
            let admitted = open.withLock { o -> Bool in
                if o.total >= l.connections { return false }
                if uid != 0 && o.perUID[uid, default: 0] >= l.connectionsPerUser { return false }
                o.total += 1
                o.perUID[uid, default: 0] += 1
                return true
            }
            if !admitted {
                Connection(fd: cfd, timeout: 1).send(.error(.busy, "jitd has too many open connections; try again in a moment"))
                close(cfd)
                continue
            }
            dispatch(fd: cfd, uid: UInt32(uid))
        }
    }

    /// Hands a connection to an idle worker thread, or starts a new one. Workers live on, so a check costs
    /// no thread creation; their number never exceeds the connection cap.
    func dispatch(fd: Int32, uid: UInt32) {
        let spawn = jobs.withLock { q -> Bool in
            q.fds.append((fd, uid))
            if q.idle > 0 {
                q.idle -= 1
                return false
            }
            return true
        }
        if spawn {
            let t = Thread { [self] in self.work() }
            t.stackSize = 512 * 1024
            t.start()
        } else {
            jobSignal.signal()
        }
    }

    func work() {
        while true {
            if let (fd, uid) = jobs.withLock({ q in q.fds.isEmpty ? nil : q.fds.removeFirst() }) {
                run(fd: fd, uid: uid)
                close(fd)
                open.withLock { o in
                    o.total -= 1
                    o.perUID[uid, default: 1] -= 1
                    if o.perUID[uid] == 0 { o.perUID[uid] = nil }
                }
                continue
            }
            jobs.withLock { $0.idle += 1 }
            jobSignal.wait()
        }
    }

    public func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        let fd = listenFD.exchange(-1, ordering: .sequentiallyConsistent)
        if fd >= 0 {
            close(fd)
            unlink(path)
        }
    }

    public var openConnections: Int { open.withLock { $0.total } }

    func run(fd: Int32, uid: UInt32) {
        let conn = Connection(fd: fd, timeout: ioTimeout)
        guard let caller = engine.directory.user(uid: uid) else {
            conn.send(.error(.unauthorized, "uid \(uid) has no user name on this host; jitd serves only known users"))
            return
        }
        var first = true
        while true {
            let msg: Message
            switch conn.receive(idle: first ? ioTimeout : idleTimeout) {
            case .closed, .timedOut:
                return
            case .failed(let e):
                conn.send(.error(e.code, e.message))
                conn.linger()
                return
            case .message(let m):
                msg = m
            }
            first = false
            let reply: Message
            if msg.word == "wait" {
                guard let r = waitFor(msg, caller: caller, conn: conn) else { return }
                reply = r
            } else {
                reply = engine.handle(msg, from: caller)
            }
            guard conn.send(reply) else { return }
        }
    }

    /// `wait`: parks on the client socket and a waker until the decision, the timeout, or the client leaving.
    func waitFor(_ m: Message, caller: Identity, conn: Connection) -> Message? {
        do {
            try m.onlyKeys(["request", "timeout", "cancel_on_close"])
            try FieldRules.validate(m)
        } catch {
            return .error(error.code, error.message)
        }
        guard let idS = m["request"], let id = Int64(idS), id > 0 else {
            return .error(.badRequest, "the field 'request' must be a request ID")
        }
        guard let tS = m["timeout"], let timeout = Int(tS), (0...3600).contains(timeout) else {
            return .error(.badRequest, "the field 'timeout' must be 0 to 3600 seconds")
        }
        let cancelOnClose: Bool
        do { cancelOnClose = try m.bool("cancel_on_close") } catch { return .error(error.code, error.message) }
        // Whose wait this is: the request's user, not the peer (root inside sudo and sshd).
        let owner: String
        do {
            switch try engine.waitState(id: id, caller: caller) {
            case .decided(let reply): return reply
            case .pending(let r): owner = r.user
            }
        } catch { return .error(error.code, error.message) }
        if let refusal = admitWait(id: id, user: owner) { return refusal }
        defer { endWait(id: id, user: owner) }
        let waker = Waker()
        engine.register(waker, for: id)
        defer { engine.unregister(waker, for: id) }
        let deadline = Date().addingTimeInterval(Double(timeout))
        while true {
            let state: Engine.WaitState
            do { state = try engine.waitState(id: id, caller: caller) } catch { return .error(error.code, error.message) }
            if case .decided(let reply) = state { return reply }
            guard case .pending(let r) = state else { return nil }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                return Engine.stillPending(r)
            }
            var fds = [pollfd(fd: conn.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: waker.fd, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, Int32(min(left, 3600) * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if fds[1].revents != 0 { waker.drain(); continue }
            if fds[0].revents != 0 {
                // The client hung up (or broke protocol by talking while waiting): it gave up.
                if cancelOnClose {
                    _ = try? engine.cancel(id: id, by: caller, why: "the waiting client went away (Ctrl-C or dropped connection)")
                }
                return nil
            }
        }
    }
}

extension Server {
    /// Takes a wait slot for `user` on request `id`, or returns the refusal: a denial for this client only
    /// (never an error reply, which `failmode=safe` would turn into a pass).
    func admitWait(id: Int64, user: String) -> Message? {
        let l = limits
        let why = waiting.withLock { w -> String? in
            if w.perRequest[id, default: 0] >= l.waitsPerRequest {
                return "\(l.waitsPerRequest) clients already wait for request \(id); wait in one of them"
            }
            if w.perUser[user, default: 0] >= l.waitsPerUser {
                return "\(l.waitsPerUser) clients already wait for \(user)'s requests; wait in one of them"
            }
            if w.total >= l.waits { return "jitd has \(l.waits) waiting clients already" }
            w.total += 1
            w.perUser[user, default: 0] += 1
            w.perRequest[id, default: 0] += 1
            return nil
        }
        guard let why else { return nil }
        // Logged once per request while its waits are full, so a flood cannot flood the log too.
        if waiting.withLock({ $0.logged.insert(id).inserted }) {
            engine.logger.warning("waits for request \(id) of \(user) refused from now on: \(why)")
        }
        return Message("ok", [("decision", "deny"), ("request", String(id)), ("state", "pending"),
                              ("message", "\(why); the request stays pending (an approver runs: jit approve \(id)), try again once it is decided")])
    }

    func endWait(id: Int64, user: String) {
        waiting.withLock { w in
            w.total -= 1
            w.perUser[user, default: 1] -= 1
            if w.perUser[user] == 0 { w.perUser[user] = nil }
            w.perRequest[id, default: 1] -= 1
            if w.perRequest[id] == 0 {
                w.perRequest[id] = nil
                w.logged.remove(id)
            }
        }
    }

    public var waitingClients: Int { waiting.withLock { $0.total } }
}

/// One client connection: framed reads and writes, each bounded by a deadline.
struct Connection {
    let fd: Int32
    let timeout: Double

    enum Received {
        case message(Message)
        case closed
        case timedOut
        case failed(WireError)
    }

    /// Reads one frame. The first byte may take `idle` seconds; the rest of the frame must follow within `timeout`.
    func receive(idle: Double) -> Received {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&p, 1, Int32(idle * 1000))
        if rc == 0 { return .timedOut }
        if rc < 0 { return .closed }
        let deadline = Date().addingTimeInterval(timeout)
        var head = [UInt8](repeating: 0, count: 4)
        switch readFully(&head, deadline: deadline) {
        case .ok: break
        case .eof(let n): return n == 0 ? .closed : .failed(WireError(.badRequest, "the message was cut short"))
        case .timeout: return .failed(WireError(.badRequest, "the message did not arrive within \(Int(timeout))s"))
        }
        let n: Int
        do { n = try Message.frameLength(head) } catch { return .failed(error) }
        var body = [UInt8](repeating: 0, count: n)
        switch readFully(&body, deadline: deadline) {
        case .ok: break
        case .eof: return .failed(WireError(.badRequest, "the message was cut short"))
        case .timeout: return .failed(WireError(.badRequest, "the message did not arrive within \(Int(timeout))s"))
        }
        do { return .message(try Message.decode(body: body)) } catch { return .failed(error) }
    }

    enum ReadResult { case ok, eof(Int), timeout }

    func readFully(_ buf: inout [UInt8], deadline: Date) -> ReadResult {
        var got = 0
        while got < buf.count {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return .timeout }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, Int32(left * 1000) + 1)
            if rc == 0 { return .timeout }
            if rc < 0 { if errno == EINTR { continue }; return .eof(got) }
            let n = buf.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress! + got, raw.count - got, 0) }
            if n == 0 { return .eof(got) }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return .eof(got) }
            got += n
        }
        return .ok
    }

    /// After an error reply to a frame we did not read whole: stop sending, then read and drop what the
    /// client is still sending (bounded in bytes and time), so that closing does not reset the connection
    /// and destroy the reply before the client reads it.
    func linger(maxBytes: Int = 16 << 20, seconds: Double = 1) {
        shutdown(fd, Int32(SHUT_WR))
        let deadline = Date().addingTimeInterval(seconds)
        var buf = [UInt8](repeating: 0, count: 65536)
        var total = 0
        while total < maxBytes {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(left * 1000) + 1) <= 0 { return }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { return }
            total += n
        }
    }

    /// Sends a reply; false when the client is gone or too slow to take it.
    @discardableResult
    func send(_ m: Message) -> Bool {
        let frame: [UInt8]
        do { frame = try m.encodeFrame() } catch {
            guard let f = try? Message.error(.internal, "the reply was too large; narrow the listing").encodeFrame() else { return false }
            frame = f
        }
        let deadline = Date().addingTimeInterval(timeout)
        var sent = 0
        while sent < frame.count {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return false }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let rc = poll(&p, 1, Int32(left * 1000) + 1)
            if rc <= 0 { if rc < 0 && errno == EINTR { continue }; return false }
            let n = frame.withUnsafeBytes { raw in Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }; return false }
            sent += n
        }
        return true
    }
}
