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
    ],
    targets: [
        // The logic: model, life cycle, durations, config, policy, wire protocol. No I/O of its own.
        .target(
            name: "JITCore",
            dependencies: [.product(name: "Yams", package: "Yams")],
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
                "JITSudoers",
                "CJITSys",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The command tree of `jit`.
        .target(
            name: "JITCLI",
            dependencies: [
                "JITCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "jitd",
            dependencies: [
                "JITAgent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "jit", dependencies: ["JITCLI"], swiftSettings: strict),
        .testTarget(name: "JITCoreTests", dependencies: ["JITCore"], swiftSettings: strict),
        .testTarget(name: "JITSudoersTests", dependencies: ["JITSudoers"], swiftSettings: strict),
        .testTarget(name: "JITAgentTests", dependencies: ["JITAgent", "JITCore"], swiftSettings: strict),
    ]
)
