import Foundation
public import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// A connection to jitd from the CLI: framed request/reply over the Unix socket, every step bounded.
public struct Client {
    public let path: String
    let fd: Int32
    let timeout: Double

    /// Connects; refuses a socket whose peer is neither root nor the caller (someone else's fake agent).
    public init(path: String, timeout: Double = 10) throws(CLIError) {
        self.path = path
        self.timeout = timeout
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CLIError.unreachable(path, String(cString: strerror(errno))) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            _ = Glibc.close(fd)
            throw CLIError(code: 2, message: "the socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            _ = Glibc.close(fd)
            throw CLIError.unreachable(path, e)
        }
        var st = stat()
        if fstat(fd, &st) == 0 {}  // the peer check below is what matters
        var cred = (Int32(0), UInt32(0), UInt32(0))
        var len = socklen_t(12)
        if getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, len == 12 {
            // Root's jitd, one's own, or the control plane's system account (the jit-access-server package runs
            // `jitd server` as _jitserver; only root can make that account).
            let server = getpwnam("_jitserver").map { $0.pointee.pw_uid }
            guard cred.1 == 0 || cred.1 == getuid() || cred.1 == server else {
                _ = Glibc.close(fd)
                throw CLIError(code: 4, message: "the socket \(path) is served by uid \(cred.1), not by root or _jitserver; it is not jitd. Check --socket or JIT_SOCKET")
            }
        }
        self.fd = fd
    }

    public func close() { _ = Glibc.close(fd) }

    /// Sends one request and reads the reply. `timeout` bounds the whole exchange.
    public func call(_ m: Message, timeout: Double? = nil) throws(CLIError) -> Message {
        let t = timeout ?? self.timeout
        let frame: [UInt8]
        do { frame = try m.encodeFrame() } catch {
            throw CLIError(code: 2, message: "\(error.message); shorten the reason or the command list")
        }
        let deadline = Date().addingTimeInterval(t)
        var sent = 0
        while sent < frame.count {
            guard wait(POLLOUT, deadline) else { throw CLIError(code: 4, message: "jitd at \(path) did not accept the request in time") }
            let n = frame.withUnsafeBytes { raw in send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw CLIError(code: 4, message: "jitd at \(path) closed the connection") }
            sent += n
        }
        var head = [UInt8](repeating: 0, count: 4)
        try read(&head, deadline)
        let n: Int
        do { n = try Message.frameLength(head) } catch { throw CLIError(code: 4, message: "jitd sent a bad reply: \(error.message)") }
        var body = [UInt8](repeating: 0, count: n)
        try read(&body, deadline)
        do { return try Message.decode(body: body) } catch {
            throw CLIError(code: 4, message: "jitd sent a reply this jit cannot read (\(error.message)); are jit and jitd the same version?")
        }
    }

    func wait(_ events: Int32, _ deadline: Date) -> Bool {
        let left = deadline.timeIntervalSinceNow
        if left <= 0 { return false }
        var p = pollfd(fd: fd, events: Int16(events), revents: 0)
        return poll(&p, 1, Int32(left * 1000) + 1) > 0
    }

    func read(_ buf: inout [UInt8], _ deadline: Date) throws(CLIError) {
        var got = 0
        while got < buf.count {
            guard wait(POLLIN, deadline) else { throw CLIError(code: 4, message: "jitd at \(path) did not answer in time") }
            let n = buf.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress! + got, raw.count - got, 0) }
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                throw CLIError(code: 4, message: "jitd at \(path) closed the connection before answering")
            }
            got += n
        }
    }
}

/// An error for the user: one sentence on stderr and an exit code (see `jit --help`).
public struct CLIError: Error, Sendable {
    public var code: Int32
    public var message: String
    public init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    static func unreachable(_ path: String, _ why: String) -> CLIError {
        CLIError(code: 4, message: "cannot reach jitd at \(path) (\(why)); is the agent running? Set --socket or JIT_SOCKET if it listens elsewhere")
    }

    /// Maps an agent error reply to an exit code.
    static func from(_ m: Message) -> CLIError {
        let code: Int32
        switch ErrorCode(rawValue: m["code"] ?? "") {
        case .unauthorized: code = 5
        case .notFound: code = 6
        case .busy, .internal: code = 1
        case .badRequest, .version, .tooLarge: code = 1
        default: code = 1
        }
        return CLIError(code: code, message: m["message"] ?? "jitd refused the request")
    }
}
