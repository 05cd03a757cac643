import Foundation
public import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// What a delivery attempt came to. `failed` carries a sentence safe to log: it names the endpoint
/// (`host:port`), never a URL path, secret or password.
public enum DeliveryResult: Sendable, Equatable {
    case sent
    case failed(String)
}

/// Sends one outbox message over its channel. The agent uses `SocketTransport`; tests use fakes.
public protocol NotifyTransport: Sendable {
    func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult
}

/// HTTP/1.1 POST and SMTP over plain TCP with POSIX sockets: every connect, read and write bounded by
/// poll() deadlines, MSG_NOSIGNAL on every send.
public struct SocketTransport: NotifyTransport {
    let hostname: String
    public init(hostname: String) { self.hostname = hostname }

    public func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult {
        let deadline = Double(max(1, timeout))
        do {
            switch c.kind {
            case .webhook, .slack:
                guard let url = c.url else { return .failed("the channel has no URL") }
                var headers = [("Content-Type", "application/json"), ("X-JIT-Event", m.kind), ("X-JIT-Delivery", String(m.id))]
                if let key = c.secret {
                    headers.append(("X-JIT-Signature", "sha256=" + HMACSHA256.hex(key: key, message: Array(m.payload.utf8))))
                }
                let code = try post(url, body: Array(m.payload.utf8), headers: headers, timeout: deadline)
                return (200...299).contains(code) ? .sent : .failed("\(url.endpoint) answered HTTP \(code)")
            case .email:
                try smtp(c, m, timeout: deadline)
                return .sent
            }
        } catch {
            return .failed(error.message)
        }
    }

    struct Failure: Error { var message: String }

    // MARK: sockets

    final class Conn {
        let fd: Int32
        let endpoint: String
        let timeout: Double
        var buffer: [UInt8] = []
        init(fd: Int32, endpoint: String, timeout: Double) {
            self.fd = fd
            self.endpoint = endpoint
            self.timeout = timeout
        }
        deinit { close(fd) }

        func wait(_ events: Int16, _ what: String) throws(Failure) {
            var p = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&p, 1, Int32(timeout * 1000))
            if rc == 0 { throw Failure(message: "\(endpoint): timed out \(what) after \(Int(timeout)) s") }
            if rc < 0 { throw Failure(message: "\(endpoint): poll failed while \(what): \(String(cString: strerror(errno)))") }
        }

        func send(_ bytes: [UInt8]) throws(Failure) {
            var off = 0
            while off < bytes.count {
                try wait(Int16(POLLOUT), "sending")
                let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    throw Failure(message: "\(endpoint): sending failed: \(String(cString: strerror(errno)))")
                }
                off += n
            }
        }

        /// Reads one CRLF- or LF-ended line (at most 8 KiB).
        func line() throws(Failure) -> String {
            while true {
                if let i = buffer.firstIndex(of: 10) {
                    var l = Array(buffer[..<i])
                    buffer.removeSubrange(...i)
                    if l.last == 13 { l.removeLast() }
                    return String(decoding: l, as: UTF8.self)
                }
                guard buffer.count < 8192 else { throw Failure(message: "\(endpoint): a reply line longer than 8 KiB") }
                try wait(Int16(POLLIN), "waiting for a reply")
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    throw Failure(message: "\(endpoint): reading failed: \(String(cString: strerror(errno)))")
                }
                if n == 0 { throw Failure(message: "\(endpoint): the connection closed before a reply") }
                buffer += chunk[..<n]
            }
        }
    }

    static func connect(host: String, port: UInt16, timeout: Double) throws(Failure) -> Conn {
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else { throw Failure(message: "\(endpoint): cannot resolve the host (\(String(cString: gai_strerror(rc))))") }
        defer { freeaddrinfo(res) }
        var why = "no address"
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { why = String(cString: strerror(errno)); continue }
            let conn = Conn(fd: fd, endpoint: endpoint, timeout: timeout)
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 {
                guard errno == EINPROGRESS else { why = String(cString: strerror(errno)); continue }
                do { try conn.wait(Int16(POLLOUT), "connecting") } catch { why = "timed out connecting"; continue }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { why = String(cString: strerror(err)); continue }
            }
            return conn
        }
        throw Failure(message: "\(endpoint): cannot connect (\(why))")
    }

    // MARK: HTTP

    /// POSTs a body and returns the status code.
    func post(_ url: HTTPURL, body: [UInt8], headers: [(String, String)], timeout: Double) throws(Failure) -> Int {
        let c = try Self.connect(host: url.host, port: url.port, timeout: timeout)
        let hostHeader = url.host.contains(":") ? "[\(url.host)]:\(url.port)" : (url.port == 80 ? url.host : "\(url.host):\(url.port)")
        var head = "POST \(url.path) HTTP/1.1\r\nHost: \(hostHeader)\r\nUser-Agent: jitd/\(JITVersion.string)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        head += "\r\n"
        try c.send(Array(head.utf8) + body)
        let status = try c.line()
        let parts = status.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else {
            throw Failure(message: "\(c.endpoint): the answer is not HTTP")
        }
        return code
    }

    // MARK: SMTP

    /// One SMTP reply (multi-line replies joined); returns the code and the text.
    static func reply(_ c: Conn) throws(Failure) -> (Int, String) {
        var text = ""
        while true {
            let l = try c.line()
            guard l.utf8.count >= 3, let code = Int(l.prefix(3)) else { throw Failure(message: "\(c.endpoint): the answer is not SMTP") }
            text += (text.isEmpty ? "" : " ") + NotifyRender.line(String(l.dropFirst(4))).prefix(200)
            if l.utf8.count == 3 || l[l.index(l.startIndex, offsetBy: 3)] == " " { return (code, text) }
        }
    }

    static func expect(_ c: Conn, _ what: String, _ ok: ClosedRange<Int>) throws(Failure) -> String {
        let (code, text) = try reply(c)
        guard ok.contains(code) else { throw Failure(message: "\(c.endpoint): \(what) answered \(code) \(text)") }
        return text
    }

    /// The DATA section: CRLF line ends, a leading '.' doubled (dot-stuffing), ended by `CRLF.CRLF`.
    /// Works on bytes: in a Swift String "\r\n" is one Character.
    static func dataSection(_ payload: String) -> [UInt8] {
        var out: [UInt8] = []
        var lines = Array(payload.utf8).split(separator: 10, omittingEmptySubsequences: false).map { l -> ArraySlice<UInt8> in
            l.last == 13 ? l.dropLast() : l
        }
        if lines.last?.isEmpty == true { lines.removeLast() }
        for l in lines {
            if l.first == UInt8(ascii: ".") { out.append(UInt8(ascii: ".")) }
            out += l
            out += [13, 10]
        }
        out += Array(".\r\n".utf8)
        return out
    }

    func smtp(_ ch: NotifyChannel, _ m: Store.OutboxRow, timeout: Double) throws(Failure) {
        guard !m.recipients.isEmpty else { throw Failure(message: "no recipients") }
        let c = try Self.connect(host: ch.smtpHost, port: ch.smtpPort, timeout: timeout)
        _ = try Self.expect(c, "the greeting", 220...220)
        try c.send(Array("EHLO \(hostname)\r\n".utf8))
        let ehlo = try Self.expect(c, "EHLO", 250...250)
        if let user = ch.username, let pass = ch.password {
            let token = Data(([0] + Array(user.utf8) + [0] + Array(pass.utf8))).base64EncodedString()
            try c.send(Array("AUTH PLAIN \(token)\r\n".utf8))
            _ = try Self.expect(c, "AUTH", 235...235)
        }
        let eight = ehlo.uppercased().contains("8BITMIME") ? " BODY=8BITMIME" : ""
        try c.send(Array("MAIL FROM:<\(ch.from)>\(eight)\r\n".utf8))
        _ = try Self.expect(c, "MAIL FROM", 250...250)
        for r in m.recipients {
            guard Email.isAddress(r) else { throw Failure(message: "refused a recipient that is not a plain address") }
            try c.send(Array("RCPT TO:<\(r)>\r\n".utf8))
            _ = try Self.expect(c, "RCPT TO", 250...251)
        }
        try c.send(Array("DATA\r\n".utf8))
        _ = try Self.expect(c, "DATA", 354...354)
        try c.send(Self.dataSection(m.payload))
        _ = try Self.expect(c, "the message", 250...250)
        try? c.send(Array("QUIT\r\n".utf8))
    }
}
