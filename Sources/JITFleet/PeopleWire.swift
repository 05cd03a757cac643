public import JITCore

// MARK: issue #15 — people: login with an SSH key, bearer tokens, and the CLI's calls over HTTPS

extension FleetWire {
    /// The namespace of login signatures (`ssh-keygen -Y sign -n jit`).
    public static let loginNamespace = "jit"

    /// The text a login signs: the server's URL (as the client reached it), the user and the nonce, so a
    /// signature made for one server, or for one user, is worth nothing at another.
    public static func loginMessage(server: String, user: String, nonce: String) -> String {
        "jit-login-v1 \(server) \(user) \(nonce)"
    }

    /// `POST /v1/login/challenge`.
    public struct LoginChallengeRequest: Codable, Sendable {
        public var user: String
        public init(user: String) { self.user = user }
    }

    /// A nonce for one login of `user`: single use, valid until `expires_at` (60 s).
    public struct LoginChallenge: Codable, Sendable {
        public var user: String
        public var nonce: String
        public var namespace: String
        /// The server's public URL: the one the signed text must name.
        public var server: String
        public var expiresAt: String
        enum CodingKeys: String, CodingKey {
            case user, nonce, namespace, server
            case expiresAt = "expires_at"
        }
        public init(user: String, nonce: String, namespace: String, server: String, expiresAt: String) {
            self.user = user
            self.nonce = nonce
            self.namespace = namespace
            self.server = server
            self.expiresAt = expiresAt
        }
    }

    /// `POST /v1/login`: the armored SSHSIG of `loginMessage(server:user:nonce:)`.
    public struct LoginRequest: Codable, Sendable {
        public var user: String
        public var nonce: String
        public var signature: String
        public init(user: String, nonce: String, signature: String) {
            self.user = user
            self.nonce = nonce
            self.signature = signature
        }
    }

    /// The bearer token of a login (shown once; the server keeps its hash).
    public struct LoginAnswer: Codable, Sendable {
        public var token: String
        public var id: String
        public var user: String
        public var key: String
        public var expiresAt: String
        enum CodingKeys: String, CodingKey {
            case token, id, user, key
            case expiresAt = "expires_at"
        }
        public init(token: String, id: String, user: String, key: String, expiresAt: String) {
            self.token = token
            self.id = id
            self.user = user
            self.key = key
            self.expiresAt = expiresAt
        }
    }

    /// `POST /v1/logout` (and other calls that only say "done").
    public struct Done: Codable, Sendable {
        public var ok: Bool
        public var message: String
        public init(message: String) {
            self.ok = true
            self.message = message
        }
    }

    /// `POST /v1/call`: one message of the agent's protocol (docs/PROTOCOL.md) as JSON. Fields are pairs
    /// because keys repeat (`command`); the answer has the same shape, with `records` for listings.
    public struct Call: Codable, Sendable {
        public var word: String
        public var fields: [[String]]
        public var records: [[[String]]]

        public init(_ m: Message) {
            word = m.word
            fields = m.fields.map { [$0.0, $0.1] }
            records = m.records.map { $0.map { [$0.0, $0.1] } }
        }

        /// The message, or the reason it is not one: every pair must be exactly a key and a value.
        public func message() throws(WireError) -> Message {
            func pairs(_ a: [[String]]) throws(WireError) -> [(String, String)] {
                var out: [(String, String)] = []
                for p in a {
                    guard p.count == 2 else { throw WireError(.badRequest, "each field is a [key, value] pair") }
                    out.append((p[0], p[1]))
                }
                return out
            }
            var rs: [[(String, String)]] = []
            for r in records { rs.append(try pairs(r)) }
            let m = Message(word, try pairs(fields), records: rs)
            // The same bounds as the socket: the frame must encode and decode to the same message.
            let body = m.encodeBody()
            guard body.count <= Wire.maxFrame else { throw WireError(.tooLarge, "the message is \(body.count) bytes; the limit is \(Wire.maxFrame)") }
            let back = try Message.decode(body: body)
            guard back == m else { throw WireError(.badRequest, "the message does not survive the wire encoding (a key or the operation is not valid)") }
            return m
        }
    }
}
