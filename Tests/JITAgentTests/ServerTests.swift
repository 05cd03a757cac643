import Foundation
import Testing
import JITCore
@testable import JITAgent
#if canImport(Glibc)
import Glibc
#endif

/// Drives the real socket server in-process with raw bytes, as an attacker with a shell would.
final class LiveServer {
    let h: Harness
    let server: Server
    let thread: Thread

    init(ioTimeout: Double = 0.5, idleTimeout: Double = 1, maxPerUser: Int = 32, limits: LimitSettings? = nil) throws {
        h = try Harness()
        // The peer is this test process: map its uid to root so every operation is reachable.
        let me = Identity(uid: getuid(), name: "tester", groups: ["jit-approvers"])
        let dir = FakeDirectory(users: FakeDirectory.standard.users.filter { $0.uid != getuid() } + [me])
        let engine = Engine(config: h.engine.config, store: h.engine.store, clock: SystemClock(), directory: dir, effects: h.effects, sessions: h.sessions)
        var l = limits ?? LimitSettings()
        if limits == nil { l.connectionsPerUser = maxPerUser }
        server = Server(engine: engine, path: h.dir.file("s.sock"), limits: l, ioTimeout: ioTimeout, idleTimeout: idleTimeout)
        try server.bind()
        let s = server
        thread = Thread { s.serve() }
        thread.start()
    }

    deinit { server.stop() }

    func connect() -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        _ = Server.fill(&addr, server.path)
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(rc == 0, "connect: \(errno)")
        return fd
    }

    func send(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads one reply frame, or nil on close/timeout.
    func reply(_ fd: Int32, timeout: Double = 3) -> Message? {
        let c = Connection(fd: fd, timeout: timeout)
        if case .message(let m) = c.receive(idle: timeout) { return m }
        return nil
    }

    func frame(_ body: String) -> [UInt8] {
        let b = Array(body.utf8)
        let n = UInt32(b.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + b
    }

    func call(_ m: Message) -> Message? {
        let fd = connect()
        defer { close(fd) }
        send(fd, try! m.encodeFrame())
        return reply(fd)
    }

    /// The server still answers, and nothing was stored.
    func stillHealthy() -> Bool {
        call(Message("hello"))?["version"] == "1"
    }
}

@Suite(.serialized) struct ServerTests {
    @Test func helloAndAFullExchange() throws {
        let s = try LiveServer()
        let r = try #require(s.call(Message("hello")))
        #expect(r["environment"] == "production")
        let st = try #require(s.call(Message("status")))
        #expect(st["pending"] == "0")
    }

    @Test(arguments: [
        ("garbage", "JIT/1 hello"),
        ("version", "JIT/2 hello\n"),
        ("bad key", "JIT/1 hello\nBAD=1\n"),
        ("no newline", "JIT/1 hello"),
        ("binary", "\u{0}\u{1}\u{2}\n"),
        ("unknown op", "JIT/1 rootme\n"),
    ])
    func malformedFramesGetAnErrorAndChangeNothing(name: String, body: String) throws {
        let s = try LiveServer()
        let fd = s.connect()
        defer { close(fd) }
        s.send(fd, s.frame(body))
        let r = try #require(s.reply(fd), "\(name): no reply")
        #expect(r.word == "error", "\(name)")
        #expect(r["message"]?.isEmpty == false)
        #expect(s.stillHealthy())
        #expect(try s.h.engine.store.requests(user: nil, pendingOnly: false).isEmpty)
    }

    @Test func oversizedFramesAreRefusedWithoutReadingThem() throws {
        let s = try LiveServer()
        let fd = s.connect()
        defer { close(fd) }
        s.send(fd, [0x00, 0xa0, 0x00, 0x00])  // 10 MB announced
        let r = try #require(s.reply(fd))
        #expect(r["code"] == "too-large")
        #expect(s.stillHealthy())
    }

    @Test func aTenMegabyteReasonIsRefused() throws {
        // The sending thread may start late on a loaded machine: give it the agent's real I/O timeout.
        let s = try LiveServer(ioTimeout: 5)
        let fd = s.connect()
        defer { close(fd) }
        let big = "JIT/1 request\nfor=60\nreason=" + String(repeating: "x", count: 10_000_000) + "\n"
        let bytes = s.frame(big)
        let t = Thread {
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        t.start()
        let r = try #require(s.reply(fd))
        #expect(r["code"] == "too-large")
        #expect(s.stillHealthy())
        #expect(try s.h.engine.store.requests(user: nil, pendingOnly: false).isEmpty)
    }

    @Test func truncatedAndSilentClientsAreDroppedOnTime() throws {
        let s = try LiveServer(ioTimeout: 0.5)
        // Announces 100 bytes, sends 10, then stalls.
        let fd = s.connect()
        defer { close(fd) }
        s.send(fd, [0, 0, 0, 100] + Array("JIT/1 list".utf8))
        let start = Date()
        let r = s.reply(fd, timeout: 5)
        #expect(r?["code"] == "bad-request")
        #expect(Date().timeIntervalSince(start) < 2)
        // Connects and sends nothing: closed after the I/O timeout.
        let quiet = s.connect()
        defer { close(quiet) }
        var b: UInt8 = 0
        var p = pollfd(fd: quiet, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 3000) == 1)
        #expect(recv(quiet, &b, 1, 0) == 0)
        #expect(s.stillHealthy())
    }

    @Test func slowClientsDoNotDelayOthers() throws {
        let s = try LiveServer(ioTimeout: 5)
        var stalled: [Int32] = []
        for _ in 0..<20 {
            let fd = s.connect()
            s.send(fd, [0, 0, 0, 50])  // a frame that never completes
            stalled.append(fd)
        }
        defer { stalled.forEach { close($0) } }
        let start = Date()
        for _ in 0..<20 { #expect(s.stillHealthy()) }
        #expect(Date().timeIntervalSince(start) < 2)
    }

    @Test func connectionsPerUserAreCapped() throws {
        let s = try LiveServer(ioTimeout: 5, maxPerUser: 4)
        guard getuid() != 0 else {
            // Root is never capped per user (the PAM module runs as root); check the total cap path instead.
            #expect(s.stillHealthy())
            return
        }
        var fds: [Int32] = []
        for _ in 0..<4 { fds.append(s.connect()) }
        defer { fds.forEach { close($0) } }
        Thread.sleep(forTimeInterval: 0.2)
        #expect(s.call(Message("hello"))?["code"] == "busy")
    }

    /// Finding 3: waits count against the user they are about, whoever the peer is (root here), per request
    /// and per user; a refused wait is a denial for that client only, and a check still answers at once.
    @Test func waitsAreCappedPerRequestAndPerUser() throws {
        var l = LimitSettings()
        l.waitsPerRequest = 2
        l.waitsPerUser = 3
        let s = try LiveServer(limits: l)
        let id = try s.h.file()
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        for _ in 0..<2 {
            let fd = s.connect()
            fds.append(fd)
            s.send(fd, try Message("wait", [("request", String(id)), ("timeout", "30")]).encodeFrame())
        }
        let until = Date().addingTimeInterval(5)
        while s.server.waitingClients < 2 && Date() < until { Thread.sleep(forTimeInterval: 0.01) }
        #expect(s.server.waitingClients == 2)
        let fd = s.connect()
        fds.append(fd)
        s.send(fd, try Message("wait", [("request", String(id)), ("timeout", "30")]).encodeFrame())
        let r = try #require(s.reply(fd, timeout: 3))
        #expect(r["decision"] == "deny")
        #expect(r["message"]?.contains("already wait for request \(id)") == true)
        #expect(s.server.waitingClients == 2)
        #expect(s.stillHealthy())
    }

    @Test func aWaiterIsWokenByTheApprovalItself() throws {
        let s = try LiveServer()
        let id = try s.h.file()
        let fd = s.connect()
        defer { close(fd) }
        s.send(fd, try Message("wait", [("request", String(id)), ("timeout", "30")]).encodeFrame())
        Thread.sleep(forTimeInterval: 0.2)
        #expect(s.server.engine.waiterCount == 1)
        let t0 = Date()
        _ = s.server.engine.handle(Message("approve", [("id", String(id))]), from: D.bob)
        let r = try #require(s.reply(fd, timeout: 5))
        let took = Date().timeIntervalSince(t0)
        #expect(r["decision"] == "allow")
        #expect(took < 0.5)
    }

    @Test func aWaiterThatTimesOutHearsPending() throws {
        let s = try LiveServer()
        let id = try s.h.file()
        let r = try #require(s.call(Message("wait", [("request", String(id)), ("timeout", "1")])))
        #expect(r["decision"] == "pending")
        #expect(try s.h.engine.store.request(id: id)?.state == .pending)
    }

    @Test func aWaiterThatHangsUpCancelsWhenAsked() throws {
        let s = try LiveServer()
        let keep = try s.h.file()
        let gone = try s.h.file()
        for (id, cancel) in [(keep, "0"), (gone, "1")] {
            let fd = s.connect()
            s.send(fd, try Message("wait", [("request", String(id)), ("timeout", "30"), ("cancel_on_close", cancel)]).encodeFrame())
            Thread.sleep(forTimeInterval: 0.2)
            close(fd)
        }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(try s.h.engine.store.request(id: keep)?.state == .pending)
        #expect(try s.h.engine.store.request(id: gone)?.state == .cancelled)
        #expect(s.server.engine.waiterCount == 0)
    }

    @Test func refusesToStealALiveSocketOrClobberAFile() throws {
        let s = try LiveServer()
        let other = Server(engine: s.server.engine, path: s.server.path)
        #expect(throws: JITError.self) { try other.bind() }
        let file = s.h.dir.file("plain")
        _ = FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        #expect(throws: JITError.self) { try Server(engine: s.server.engine, path: file).bind() }
        #expect(FileManager.default.contents(atPath: file) == Data("x".utf8))
        var st = stat()
        #expect(lstat(s.server.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o666)
    }
}
