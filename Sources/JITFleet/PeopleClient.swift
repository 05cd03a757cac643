import AsyncHTTPClient
import Foundation
public import JITCore
import NIOCore
import NIOPosix
import NIOSSL

/// A person's side of the control plane (`jit login`, then every `jit` command with `--server`): HTTPS
/// verified against the fleet CA given (`--ca`) or the system's trust store, a bearer token on every call.
public struct PeopleClient: Sendable {
    public let server: String
    let tls: TLSConfiguration

    /// `caPEM`: the CA that issued the server's certificate; nil trusts the system store.
    public init(server: String, caPEM: String?) throws(FleetError) {
        self.server = try FleetClient(server: server).server
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caPEM { tls.trustRoots = .certificates(try FleetClient.nioCertificates(caPEM, what: "the CA (--ca)")) }
        self.tls = tls
    }

    public func challenge(user: String) async throws(FleetError) -> FleetWire.LoginChallenge {
        try await send("/v1/login/challenge", FleetWire.LoginChallengeRequest(user: user), token: nil, timeout: 30)
    }

    public func login(_ body: FleetWire.LoginRequest) async throws(FleetError) -> FleetWire.LoginAnswer {
        try await send("/v1/login", body, token: nil, timeout: 30)
    }

    public func logout(token: String) async throws(FleetError) {
        let _: FleetWire.Done = try await send("/v1/logout", [String: String](), token: token, timeout: 30)
    }

    /// A one-time sign-in link to the web approval page (`POST /v1/web/link`; a login's token only).
    public func webLink(token: String) async throws(FleetError) -> FleetWire.WebLink {
        try await send("/v1/web/link", [String: String](), token: token, timeout: 30)
    }

    /// One protocol message through `POST /v1/call`; an engine's refusal comes back as a FleetError whose
    /// code is the protocol's (`unauthorized`, `not-found`, ...), with the engine's sentence.
    public func call(_ m: Message, token: String, timeout: Double) async throws(FleetError) -> Message {
        let answer: FleetWire.Call = try await send("/v1/call", FleetWire.Call(m), token: token, timeout: timeout)
        do { return try answer.message() } catch {
            throw FleetError("bad_answer", "the control plane at \(server) sent a reply this jit cannot read (\(error.message)); are jit and jitd the same version?")
        }
    }

    func send<Body: Encodable, Answer: Decodable>(_ path: String, _ body: Body, token: String?, timeout: Double) async throws(FleetError) -> Answer {
        let t = TimeAmount.milliseconds(Int64(timeout * 1000))
        let client = HTTPClient(
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            configuration: HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: t)))
        do {
            var req = HTTPClientRequest(url: server + path)
            req.method = .POST
            req.headers.add(name: "accept", value: "application/json")
            req.headers.add(name: "content-type", value: "application/json")
            if let token { req.headers.add(name: "authorization", value: "Bearer \(token)") }
            req.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(body)))
            let resp = try await client.execute(req, timeout: t + .seconds(5))
            let data = Data(try await resp.body.collect(upTo: 4 << 20).readableBytesView)
            try? await client.shutdown()
            guard resp.status.code / 100 == 2 else {
                if let e = try? JSONDecoder().decode(FleetWire.ErrorBody.self, from: data) { throw FleetError(e.error.code, e.error.message) }
                throw FleetError("http_\(resp.status.code)", "the control plane at \(server) answered \(resp.status.code) \(resp.status.reasonPhrase) to POST \(path)")
            }
            do { return try JSONDecoder().decode(Answer.self, from: data) } catch {
                throw FleetError("bad_answer", "the control plane at \(server) sent an answer to POST \(path) that cannot be read: \(error)")
            }
        } catch {
            try? await client.shutdown()
            if let e = error as? FleetError { throw e }
            throw FleetError("unreachable", "cannot reach the control plane at \(server): \(FleetClient.describe(error))")
        }
    }
}
