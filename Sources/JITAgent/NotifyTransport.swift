import AsyncHTTPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif
public import JITCore
import JITSudoers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// Why one delivery attempt failed, as a sentence safe to log.
struct NotifyFailure: Error { var message: String }

/// What a delivery attempt came to. `failed` carries a sentence safe to log: it names the channel and the
/// endpoint (`host:port`), never a URL path, secret or password.
public enum DeliveryResult: Sendable, Equatable {
    case sent
    case failed(String)
}

/// Sends one outbox message over its channel. The agent uses `LiveTransport`; tests use fakes.
public protocol NotifyTransport: Sendable {
    func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult
    /// Closes kept-alive connections; called once when the agent stops.
    func shutdown()
}

extension NotifyTransport {
    public func shutdown() {}
}

/// Webhooks and Slack over HTTPS with async-http-client (one shared client: kept-alive connections, the
/// system CA bundle or the channel's `ca_file`, redirects never followed); mail through the system's
/// `sendmail`, or SMTP over a NIO channel with NIOSSL (STARTTLS required, or implicit TLS on port 465).
/// Called from the notifier's own thread: each call blocks until its deadline at most.
public final class LiveTransport: NotifyTransport {
    let hostname: String
    /// Made at the first webhook or Slack post, so an agent without such channels runs no client.
    let client = Mutex<HTTPClient?>(nil)
    let closed = Atomic<Bool>(false)

    public init(hostname: String) { self.hostname = hostname }

    public func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult {
        let seconds = max(1, timeout)
        do {
            switch c.kind {
            case .webhook, .slack: try post(m, via: c, timeout: seconds)
            case .email:
                switch c.transport {
                case .sendmail: try sendmail(m, via: c, timeout: seconds)
                case .smtp: try SMTPSession.send(m, via: c, hostname: hostname, timeout: seconds)
                }
            }
            return .sent
        } catch {
            return .failed("channel '\(c.name)': \(error.message)")
        }
    }

    public func shutdown() {
        closed.store(true, ordering: .sequentiallyConsistent)
        let c = client.withLock { c in
            defer { c = nil }
            return c
        }
        try? c?.syncShutdown()
    }

    // MARK: HTTPS

    func httpClient() throws(NotifyFailure) -> HTTPClient {
        try client.withLock { c throws(NotifyFailure) -> HTTPClient in
            guard !closed.load(ordering: .sequentiallyConsistent) else { throw NotifyFailure(message: "jitd is stopping") }
            if let c { return c }
            var cfg = HTTPClient.Configuration(
                tlsConfiguration: .makeClientConfiguration(), redirectConfiguration: .disallow,
                connectionPool: .init(idleTimeout: .seconds(60)), decompression: .disabled)
            cfg.httpVersion = .http1Only
            // A refused connection fails this attempt at once: the outbox's back-off does the retrying.
            cfg.connectionPool.retryConnectionEstablishment = false
            let made = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: cfg)
            c = made
            return made
        }
    }

    /// The Standard Webhooks headers (standardwebhooks.com): `webhook-id` stays the same on every retry,
    /// `webhook-timestamp` is this attempt's, and `webhook-signature` is `v1,` and the base64 HMAC-SHA256
    /// of `id.timestamp.body` under the channel's key.
    static func standardWebhooks(id: String, at: Date, body: [UInt8], key: [UInt8]) -> [(String, String)] {
        let ts = String(Int64(at.timeIntervalSince1970.rounded(.down)))
        let mac = HMACSHA256.mac(key: key, message: Array("\(id).\(ts).".utf8) + body)
        return [("webhook-id", id), ("webhook-timestamp", ts), ("webhook-signature", "v1," + Data(mac).base64EncodedString())]
    }

    func post(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) throws(NotifyFailure) {
        guard let url = c.url else { throw NotifyFailure(message: "the channel has no URL") }
        let body = Array(m.payload.utf8)
        var headers = HTTPHeaders([("Content-Type", "application/json"), ("User-Agent", "jitd/\(JITVersion.string)"),
                                   ("X-JIT-Event", m.kind), ("X-JIT-Delivery", String(m.id))])
        if let key = c.secret {
            headers.add(name: "X-JIT-Signature", value: "sha256=" + HMACSHA256.hex(key: key, message: body))
        }
        if let key = c.webhookKey {
            headers.add(contentsOf: Self.standardWebhooks(id: "jit-\(hostname)-\(m.id)", at: Date(), body: body, key: key))
        }
        var tls: TLSConfiguration? = nil
        if let ca = c.caFile {
            var t = TLSConfiguration.makeClientConfiguration()
            t.trustRoots = .file(ca)
            tls = t
        }
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: url.string, method: .POST, headers: headers, body: .bytes(body), tlsConfiguration: tls)
        } catch {
            throw NotifyFailure(message: "\(url.endpoint): not a URL the HTTP client accepts")
        }
        let client = try httpClient()
        let status: UInt
        do {
            status = try client.execute(request: request, delegate: StatusOnly(), deadline: .now() + .seconds(timeout)).futureResult.wait()
        } catch {
            throw NotifyFailure(message: "\(url.endpoint): \(Self.describe(error, timeout: timeout))")
        }
        guard (200...299).contains(status) else {
            let redirect = (300...399).contains(status) ? " (redirects are not followed: give the final URL)" : ""
            throw NotifyFailure(message: "\(url.endpoint) answered HTTP \(status)\(redirect)")
        }
    }

    /// A sentence for an HTTP client, NIO or TLS error, without URLs (a Slack hook's path is its secret).
    static func describe(_ error: any Error, timeout: Int64) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .deadlineExceeded, .readTimeout, .connectTimeout, .writeTimeout: return "timed out after \(timeout) s"
            case .remoteConnectionClosed: return "the server closed the connection before answering"
            case .alreadyShutdown: return "jitd is stopping"
            default: return "HTTP failed (\(e))"
            }
        }
        return TLSWords.describe(error)
    }

    // MARK: sendmail

    /// `sendmail -t -i -f FROM` with the message on stdin (LF line ends, as local mail is written): the MTA
    /// takes it from there (TLS, relaying, queueing). Exit status 0 means the MTA accepted it.
    func sendmail(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) throws(NotifyFailure) {
        guard !m.recipients.isEmpty else { throw NotifyFailure(message: "no recipients") }
        var input: [UInt8] = []
        input.reserveCapacity(m.payload.utf8.count)
        for b in m.payload.utf8 where b != 13 { input.append(b) }
        let r = Posix.run(c.sendmail, ["-t", "-i", "-f", c.from], input: input, timeout: Int(timeout))
        guard r.status == 0 else {
            let said = NotifyRender.line(r.output.split(whereSeparator: \.isNewline).joined(separator: " / ")).prefix(300)
            let how = r.status < 0 ? "failed" : "exited with status \(r.status)"
            throw NotifyFailure(message: "\(c.sendmail) \(how)\(said.isEmpty ? "" : ": \(said)")")
        }
    }
}

/// Keeps the status code and reads the body away unstored: whatever a receiver answers, only the status counts
/// (a large body must not turn an acknowledged post into a retried one).
final class StatusOnly: HTTPClientResponseDelegate {
    typealias Response = UInt
    let status = Atomic<UInt>(0)

    func didReceiveHead(task: HTTPClient.Task<UInt>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        status.store(head.status.code, ordering: .sequentiallyConsistent)
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<UInt>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<UInt>) throws -> UInt { status.load(ordering: .sequentiallyConsistent) }
}

/// TLS failures in words an admin can act on.
enum TLSWords {
    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOSSLExtraError, e == .failedToValidateHostname {
            return "TLS: the server's certificate is not for this host name (\(e))"
        }
        if let e = error as? NIOSSLError {
            switch e {
            case .handshakeFailed(let inner):
                let text = "\(inner)"
                if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
                    return "TLS: the server's certificate is not trusted (it does not chain to the system CA bundle or the channel's ca_file)"
                }
                return "TLS handshake failed: \(text)"
            case .uncleanShutdown: return "TLS: the server closed the connection without a TLS close"
            default: return "TLS failed: \(e)"
            }
        }
        if let e = error as? NIOConnectionError {
            let why = e.connectionErrors.first.map { f in (f.error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(f.error)" }
            return "cannot connect (\(why ?? "the host name has no address"))"
        }
        if let e = error as? ChannelError, case .connectTimeout = e { return "timed out connecting" }
        if let e = error as? IOError { return "connection failed: \(String(cString: strerror(e.errnoCode)))" }
        return "\(error)"
    }
}
