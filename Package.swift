// swift-tools-version:6.2
import PackageDescription

/// Strict settings shared by every target: Swift 6 language mode (complete concurrency checking),
/// explicit `any` for existentials, and no warnings left behind.
let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .treatAllWarnings(as: .error),
]

/// `JIT_HOST_ONLY=1` (set by scripts/build-deb.sh): the host package's build, without the control plane
/// (hummingbird, postgres-nio and the server's code stay out of the host's binary; `jitd server` says so).
let hostOnly = Context.environment["JIT_HOST_ONLY"] == "1"

let package = Package(
    name: "jit-access",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "jitd", targets: ["jitd"]),
        .executable(name: "jit", targets: ["jit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", exact: "6.2.2"),
        // Crypto (SHA-256, HMAC, SHA-1 for RFC 6238, keys), TLS, HTTP client, X.509: never by hand.
        .package(url: "https://github.com/apple/swift-crypto", exact: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // The fleet's control plane: HTTPS API, PostgreSQL, graceful shutdown.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Tests only: property-based tests of the policy's invariants.
        .package(url: "https://github.com/x-sheep/swift-property-based", exact: "2.0.1"),
    ],
    targets: [
        // The logic: model, life cycle, durations, config, policy, wire protocol. No I/O of its own.
        .target(
            name: "JITCore",
            dependencies: [.product(name: "Yams", package: "Yams"), .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        // The one place that writes sudoers: rendering, injection checks, visudo, atomic install, reconcile.
        .target(name: "JITSudoers", swiftSettings: strict),
        // eventfd, SO_PEERCRED and zlib (audit archives): what the Glibc overlay does not expose.
        .target(name: "CJITSys", cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])], linkerSettings: [.linkedLibrary("z")]),
        // The agent: store, socket server, peer credentials, waiting, expiry, sudoers.
        .target(
            name: "JITAgent",
            dependencies: [
                "JITCore",
                "JITFleet",
                "JITSudoers",
                "CJITSys",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                // Notifications: HTTPS webhooks, SMTP over NIO with TLS.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict
        ),
        // The command tree of `jit`.
        .target(
            name: "JITCLI",
            dependencies: [
                "JITCore",
                // `audit verify --verify-key` reads the trail itself: the key never goes to jitd.
                "JITAgent",
                // `jit login` and `--server`: the control plane over HTTPS (the client half only).
                "JITFleet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // What a fleet host and the control plane share: the join token, the CA fingerprint, the host
        // certificate's identity fields, the API's wire types; and the host's side of enrolment and renewal.
        .target(
            name: "JITFleet",
            dependencies: [
                "JITCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The control plane (`jitd server`): server.yaml, PostgreSQL, the fleet CA, the HTTPS API.
        .target(
            name: "JITServer",
            dependencies: [
                "JITCore",
                "JITFleet",
                // The one decision engine (`Engine`) runs here too, over PostgresStore.
                "JITAgent",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            // The OpenAPI spec, served at GET /v1/openapi.yaml and checked against the router by a test.
            resources: [.embedInCode("openapi.yaml")],
            swiftSettings: strict
        ),
        // The command tree of `jitd` (run, check-config, revoke-all, server, enrol).
        .target(
            name: "JITDaemon",
            dependencies: [
                "JITAgent",
                "JITCore",
                "JITFleet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ] + (hostOnly ? [] : ["JITServer"]),
            swiftSettings: strict + (hostOnly ? [.define("JIT_HOST_ONLY")] : [])
        ),
        .executableTarget(name: "jitd", dependencies: ["JITDaemon"], swiftSettings: strict),
        .executableTarget(name: "jit", dependencies: ["JITCLI"], swiftSettings: strict),
        // What the .deb ships: one binary, installed as jitd and jit; the name it runs under picks the tree.
        .executableTarget(name: "jit-multicall", dependencies: ["JITCLI", "JITDaemon"], swiftSettings: strict),
        // make bench-fleet's simulated hosts (bench/fleet.py): a benchmark tool, not in any package.
        .executableTarget(
            name: "jit-bench-hosts",
            dependencies: [
                "JITFleet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "bench/FleetHosts",
            swiftSettings: strict
        ),
        .testTarget(
            name: "JITCoreTests",
            dependencies: [
                "JITCore", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "JITFleetTests",
            dependencies: [
                "JITFleet",
                "JITServer",
                "JITAgent",
                "JITCore",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "JITSudoersTests", dependencies: ["JITSudoers"], swiftSettings: strict),
        .testTarget(
            name: "JITAgentTests",
            // JITServer: the decision-store conformance suite runs the same tests against PostgresStore, and the
            // web page runs over the real engine (WebEngineTests).
            dependencies: [
                "JITAgent", "JITCore", "JITServer", "JITFleet", .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "X509", package: "swift-certificates"), .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: strict
        ),
    ]
)
