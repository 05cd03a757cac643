import Foundation
import JITCore
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// The server's reply lines, collected on the channel's event loop; `next` hands them out one at a time.
final class SMTPLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var pending: [UInt8] = []
    private var lines: [String] = []
    private var waiter: EventLoopPromise<String>? = nil
    private var failure: (any Error)? = nil

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = Self.unwrapInboundIn(data)
        pending += b.readBytes(length: b.readableBytes) ?? []
        while let i = pending.firstIndex(of: 10) {
            var l = Array(pending[..<i])
            pending.removeSubrange(...i)
            if l.last == 13 { l.removeLast() }
            lines.append(String(decoding: l, as: UTF8.self))
        }
        if pending.count > 8192 {
            fail(NotifyFailure(message: "a reply line longer than 8 KiB"))
            context.close(promise: nil)
        }
        serve()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(NotifyFailure(message: "the connection closed before a reply"))
        context.fireChannelInactive()
    }

    private func fail(_ e: any Error) {
        if failure == nil { failure = e }
        serve()
    }

    private func serve() {
        guard let w = waiter else { return }
        if !lines.isEmpty {
            waiter = nil
            w.succeed(lines.removeFirst())
        } else if let f = failure {
            waiter = nil
            w.fail(f)
        }
    }

    func next(on loop: any EventLoop) -> EventLoopFuture<String> {
        let p = loop.makePromise(of: String.self)
        waiter = p
        serve()
        return p.futureResult
    }

    /// The first error the connection met (a failed TLS handshake, say), in words.
    var failureWords: String? {
        guard let f = failure else { return nil }
        return (f as? NotifyFailure)?.message ?? TLSWords.describe(f)
    }

    /// Nothing received that was not read: checked before TLS starts, so no plaintext the server (or
    /// someone in between) sent early is ever read as if it came over TLS.
    var isDrained: Bool { lines.isEmpty && pending.isEmpty }
}

/// One SMTP dialogue over a NIO channel: implicit TLS (port 465) or STARTTLS required, the server's
/// certificate verified (system CA bundle or the channel's `ca_file`, and its name); AUTH PLAIN only over
/// TLS or to this host. Driven from the notifier's thread; each step is bounded by the timeout.
final class SMTPSession: Sendable {
    let channel: any Channel
    let lines: NIOLoopBound<SMTPLineHandler>
    let endpoint: String
    let timeout: Int64
    let timedOut = Atomic<Bool>(false)

    init(channel: any Channel, lines: NIOLoopBound<SMTPLineHandler>, endpoint: String, timeout: Int64) {
        self.channel = channel
        self.lines = lines
        self.endpoint = endpoint
        self.timeout = timeout
    }

    static func send(_ m: Store.OutboxRow, via c: NotifyChannel, hostname: String, timeout: Int64) throws(NotifyFailure) {
        guard !m.recipients.isEmpty else { throw NotifyFailure(message: "no recipients") }
        let endpoint = c.smtpHost.contains(":") ? "[\(c.smtpHost)]:\(c.smtpPort)" : "\(c.smtpHost):\(c.smtpPort)"
        var tls: NIOSSLContext? = nil
        if c.smtpSecurity != .none { tls = try context(c, endpoint) }
        let s = try connect(c, endpoint: endpoint, implicitTLS: c.smtpSecurity == .implicit ? tls : nil, timeout: timeout)
        defer { s.channel.close(promise: nil) }
        try s.dialogue(m, c, tls: tls, hostname: hostname)
    }

    static func context(_ c: NotifyChannel, _ endpoint: String) throws(NotifyFailure) -> NIOSSLContext {
        var t = TLSConfiguration.makeClientConfiguration()
        if let ca = c.caFile { t.trustRoots = .file(ca) }
        do { return try NIOSSLContext(configuration: t) } catch {
            throw NotifyFailure(message: "\(endpoint): cannot set up TLS (\(c.caFile.map { "ca_file \($0)" } ?? "the system CA bundle")): \(error)")
        }
    }

    /// The name the certificate must carry; nil for an address (then its IP SAN must match).
    static func serverName(_ host: String) -> String? { (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil }

    static func connect(_ c: NotifyChannel, endpoint: String, implicitTLS: NIOSSLContext?, timeout: Int64) throws(NotifyFailure) -> SMTPSession {
        let name = serverName(c.smtpHost)
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(timeout))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let implicitTLS { try ch.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: implicitTLS, serverHostname: name)) }
                    try ch.pipeline.syncOperations.addHandler(SMTPLineHandler())
                }
            }
        do {
            let ch = try bootstrap.connect(host: c.smtpHost, port: Int(c.smtpPort)).wait()
            let lines = try ch.eventLoop.submit {
                NIOLoopBound(try ch.pipeline.syncOperations.handler(type: SMTPLineHandler.self), eventLoop: ch.eventLoop)
            }.wait()
            return SMTPSession(channel: ch, lines: lines, endpoint: endpoint, timeout: timeout)
        } catch {
            throw NotifyFailure(message: "\(endpoint): \(TLSWords.describe(error))")
        }
    }

    /// Waits for a step; past the timeout the connection is closed, which fails the step.
    func wait<T: Sendable>(_ f: EventLoopFuture<T>, _ what: String) throws(NotifyFailure) -> T {
        let timer = channel.eventLoop.scheduleTask(in: .seconds(timeout)) { [self] in
            timedOut.store(true, ordering: .sequentiallyConsistent)
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        do { return try f.wait() } catch {
            if timedOut.load(ordering: .sequentiallyConsistent) { throw NotifyFailure(message: "\(endpoint): timed out \(what) after \(timeout) s") }
            // A write fails as "closed" when TLS failed underneath: the handler kept the real cause.
            let cause = try? channel.eventLoop.submit { [lines] in lines.value.failureWords }.wait()
            let words = (cause ?? nil) ?? (error as? NotifyFailure)?.message ?? TLSWords.describe(error)
            throw NotifyFailure(message: "\(endpoint): \(words) (\(what))")
        }
    }

    func line(_ what: String) throws(NotifyFailure) -> String {
        try wait(channel.eventLoop.flatSubmit { [lines, channel] in lines.value.next(on: channel.eventLoop) }, what)
    }

    func write(_ text: String, _ what: String) throws(NotifyFailure) { try write(Array(text.utf8), what) }

    func write(_ bytes: [UInt8], _ what: String) throws(NotifyFailure) {
        try wait(channel.writeAndFlush(ByteBuffer(bytes: bytes)), what)
    }

    /// One reply (multi-line replies gathered): the code and each line's text.
    func reply(_ what: String) throws(NotifyFailure) -> (Int, [String]) {
        var texts: [String] = []
        while true {
            let l = try line("waiting for the answer to \(what)")
            guard l.utf8.count >= 3, let code = Int(l.prefix(3)) else { throw NotifyFailure(message: "\(endpoint): the answer is not SMTP") }
            texts.append(String(l.dropFirst(4)))
            if l.utf8.count == 3 || l[l.index(l.startIndex, offsetBy: 3)] == " " { return (code, texts) }
        }
    }

    @discardableResult
    func expect(_ what: String, _ ok: ClosedRange<Int>) throws(NotifyFailure) -> [String] {
        let (code, texts) = try reply(what)
        guard ok.contains(code) else {
            throw NotifyFailure(message: "\(endpoint): \(what) answered \(code) \(NotifyRender.line(texts.joined(separator: " ")).prefix(200))")
        }
        return texts
    }

    func dialogue(_ m: Store.OutboxRow, _ c: NotifyChannel, tls: NIOSSLContext?, hostname: String) throws(NotifyFailure) {
        try expect("the greeting", 220...220)
        try write("EHLO \(hostname)\r\n", "sending EHLO")
        var ehlo = try expect("EHLO", 250...250)
        if c.smtpSecurity == .starttls, let tls {
            guard ehlo.dropFirst().contains(where: { $0.uppercased() == "STARTTLS" }) else {
                throw NotifyFailure(message: "\(endpoint) does not offer STARTTLS and the channel requires it (starttls: required); nothing was sent in clear text")
            }
            try write("STARTTLS\r\n", "sending STARTTLS")
            try expect("STARTTLS", 220...220)
            let drained = try wait(channel.eventLoop.submit { [lines] in lines.value.isDrained }, "starting TLS")
            guard drained else { throw NotifyFailure(message: "\(endpoint) sent more after its STARTTLS answer; refused (a sign of command injection)") }
            let name = Self.serverName(c.smtpHost)
            try wait(channel.eventLoop.submit { [channel] in
                try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name), position: .first)
            }, "starting TLS")
            try write("EHLO \(hostname)\r\n", "sending EHLO over TLS")
            ehlo = try expect("EHLO over TLS", 250...250)
        }
        if let user = c.username, let pass = c.password {
            guard c.smtpSecurity != .none || Loopback.isHost(c.smtpHost) else {
                throw NotifyFailure(message: "refusing to send the password without TLS")
            }
            let token = Data(([0] + Array(user.utf8) + [0] + Array(pass.utf8))).base64EncodedString()
            try write("AUTH PLAIN \(token)\r\n", "sending AUTH")
            try expect("AUTH", 235...235)
        }
        let eight = ehlo.dropFirst().contains { $0.uppercased() == "8BITMIME" } ? " BODY=8BITMIME" : ""
        try write("MAIL FROM:<\(c.from)>\(eight)\r\n", "sending MAIL FROM")
        try expect("MAIL FROM", 250...250)
        for r in m.recipients {
            guard Email.isAddress(r) else { throw NotifyFailure(message: "refused a recipient that is not a plain address") }
            try write("RCPT TO:<\(r)>\r\n", "sending RCPT TO")
            try expect("RCPT TO", 250...251)
        }
        try write("DATA\r\n", "sending DATA")
        try expect("DATA", 354...354)
        try write(Self.dataSection(m.payload), "sending the message")
        try expect("the message", 250...250)
        try? write("QUIT\r\n", "sending QUIT")
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
}
