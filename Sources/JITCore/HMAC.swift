/// HMAC-SHA256 (RFC 2104) on top of `SHA256`: webhook bodies are signed with it so a receiver can check
/// that a post came from this agent.
public enum HMACSHA256 {
    public static func mac(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var k = key
        if k.count > 64 {
            var h = SHA256()
            h.update(k)
            k = h.finalize()
        }
        k += [UInt8](repeating: 0, count: 64 - k.count)
        var inner = SHA256()
        inner.update(k.map { $0 ^ 0x36 })
        inner.update(message)
        let ih = inner.finalize()
        var outer = SHA256()
        outer.update(k.map { $0 ^ 0x5c })
        outer.update(ih)
        return outer.finalize()
    }

    public static func hex(key: [UInt8], message: [UInt8]) -> String {
        let digits: [Character] = Array("0123456789abcdef")
        return String(mac(key: key, message: message).flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xf)]] })
    }
}
