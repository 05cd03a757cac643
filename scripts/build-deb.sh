#!/bin/sh
# Builds dist/jit-access_VERSION_amd64.deb from this checkout: `make deb`.
#
# One release binary built with --static-swift-stdlib (a target host has no Swift), stripped, installed as
# /usr/sbin/jitd with /usr/bin/jit a symbolic link to it (the name it runs under picks the command tree:
# the runtime, Foundation and its ICU data are in the package once, not twice); pam_jit.so built by
# `make -C pam release` (stripped); Depends computed by dpkg-shlibdeps from what the two ELF files
# really link, plus sudo (visudo) and libpam-runtime (pam-auth-update in the maintainer scripts).
#
# Variables: SWIFT (swift), SCRATCH (.build-release), DEB_COMPRESS (xz | zstd; default xz).
set -eu
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
SWIFT=${SWIFT:-swift}
SCRATCH=${SCRATCH:-.build-release}
DEB_COMPRESS=${DEB_COMPRESS:-xz}
PKG=jit-access
ARCH=$(dpkg --print-architecture)
[ "$ARCH" = amd64 ] || { echo "build-deb: only amd64 is packaged (this is $ARCH)" >&2; exit 1; }
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
VERSION=$(dpkg-parsechangelog -l packaging/changelog -S Version)
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l packaging/changelog -S Timestamp)
export SOURCE_DATE_EPOCH
STAGE=.build-deb
ROOT=$STAGE/root
OUT=dist/${PKG}_${VERSION}_${ARCH}.deb

echo "build-deb: $PKG $VERSION: release build (static Swift stdlib)"
# -z now: full RELRO, as Debian's hardening flags ask (SwiftPM links with -z relro only).
FLAGS="-c release --static-swift-stdlib --scratch-path $SCRATCH -Xlinker -z -Xlinker now"
# The host package has no control plane in it (Package.swift: JIT_HOST_ONLY): smaller binary, less RSS.
export JIT_HOST_ONLY=1
$SWIFT build $FLAGS --product jit-multicall
BIN=$($SWIFT build $FLAGS --show-bin-path)/jit-multicall
echo "build-deb: pam_jit.so (make -C pam release)"
make -s -C pam release

rm -rf "$STAGE"
mkdir -p "$ROOT/DEBIAN" "$ROOT/usr/sbin" "$ROOT/usr/bin" "$ROOT/lib/$MULTIARCH/security" \
    "$ROOT/lib/systemd/system" "$ROOT/etc/jit" "$ROOT/usr/share/pam-configs" \
    "$ROOT/usr/share/man/man1" "$ROOT/usr/share/man/man5" "$ROOT/usr/share/man/man8" \
    "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/doc/$PKG" "$ROOT/usr/share/lintian/overrides"

# The binaries, stripped as dh_strip does.
install -m 0755 "$BIN" "$ROOT/usr/sbin/jitd"
strip --remove-section=.comment --remove-section=.note "$ROOT/usr/sbin/jitd"
ln -s ../sbin/jitd "$ROOT/usr/bin/jit"
install -m 0644 pam/pam_jit.so "$ROOT/lib/$MULTIARCH/security/pam_jit.so"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$ROOT/lib/$MULTIARCH/security/pam_jit.so"

# The program's version must be the package's.
for exe in "$ROOT/usr/bin/jit" "$ROOT/usr/sbin/jitd"; do
    v=$("$exe" --version)
    [ "$v" = "$VERSION" ] || { echo "build-deb: '$(basename "$exe") --version' says '$v' but packaging/changelog says $VERSION; make them agree" >&2; exit 1; }
done

install -m 0644 packaging/jit.yaml "$ROOT/etc/jit/jit.yaml"
install -m 0644 packaging/jitd.service "$ROOT/lib/systemd/system/jitd.service"
install -m 0644 packaging/pam-config "$ROOT/usr/share/pam-configs/jit"
# bash-completion sources the file: no #! line.
"$ROOT/usr/bin/jit" --generate-completion-script bash | sed '1{/^#!/d}' > "$ROOT/usr/share/bash-completion/completions/jit"
chmod 0644 "$ROOT/usr/share/bash-completion/completions/jit"
for page in packaging/man/*.[1-8]; do
    section=${page##*.}
    gzip -9n < "$page" > "$ROOT/usr/share/man/man$section/$(basename "$page").gz"
done
[ -f packaging/man/pam_jit.8 ] || echo "build-deb: note: packaging/man/pam_jit.8 is missing; the package has no pam_jit(8)" >&2
install -m 0644 packaging/lintian/jit-access "$ROOT/usr/share/lintian/overrides/jit-access"
install -m 0644 packaging/copyright "$ROOT/usr/share/doc/$PKG/copyright"
gzip -9n < packaging/changelog > "$ROOT/usr/share/doc/$PKG/changelog.gz"
gzip -9n < packaging/README.md > "$ROOT/usr/share/doc/$PKG/README.md.gz"

# Control files.
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$ROOT/DEBIAN/$s"; done
install -m 0644 packaging/debian/conffiles "$ROOT/DEBIAN/conffiles"
mkdir -p "$STAGE/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PKG" "$PKG" > "$STAGE/shlibs/debian/control"
shlibs=$(cd "$STAGE/shlibs" && dpkg-shlibdeps -O -e"../root/usr/sbin/jitd" -e"../root/lib/$MULTIARCH/security/pam_jit.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
DEPENDS="$shlibs, libpam-runtime (>= 1.0.1-6), sudo | sudo-ldap"
SIZE=$(du -s -k --apparent-size --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@DEPENDS@/$DEPENDS/" \
    packaging/debian/control.in > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/md5sums" "$ROOT/DEBIAN/control"

# Reproducible: every file dated by the changelog entry.
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p dist
rm -f "dist/${PKG}_"*"_$ARCH.deb"
case "$DEB_COMPRESS" in
    xz) Z="-Zxz -z9" ;;
    zstd) Z="-Zzstd -z19" ;;
    *) echo "build-deb: DEB_COMPRESS is xz or zstd" >&2; exit 1 ;;
esac
dpkg-deb --root-owner-group $Z --build "$ROOT" "$OUT" >/dev/null
bytes=$(stat -c %s "$OUT")
echo "build-deb: $OUT: $(awk "BEGIN { printf \"%.1f\", $bytes / 1048576 }") MB ($bytes bytes; installed $((SIZE / 1024)) MB)"
echo "build-deb: Depends: $DEPENDS"
