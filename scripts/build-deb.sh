#!/bin/sh
# Builds dist/jit-access_VERSION_amd64.deb and dist/jit-access-server_VERSION_amd64.deb from this checkout:
# `make deb`.
#
# jit-access (the host):
# One release binary built with --static-swift-stdlib (a target host has no Swift), stripped, installed as
# /usr/sbin/jitd with /usr/bin/jit a symbolic link to it (the name it runs under picks the command tree:
# the runtime, Foundation and its ICU data are in the package once, not twice); pam_jit.so built by
# `make -C pam release` (stripped); Depends computed by dpkg-shlibdeps from what the two ELF files
# really link, plus sudo (visudo) and libpam-runtime (pam-auth-update in the maintainer scripts).
#
# jit-access-server (the control plane): the full jitd (with JITServer), installed as /usr/sbin/jitd-server
# (started under that name it runs the 'jitd server' tree, as the system user _jitserver), its unit,
# /etc/jit/server.yaml and jitd-server(8). No file is in both packages: they install together.
#
# Variables: SWIFT (swift), SCRATCH (.build-release), DEB_COMPRESS (xz | zstd; default xz),
# PACKAGES (default "jit-access jit-access-server").
set -eu
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
SWIFT=${SWIFT:-swift}
SCRATCH=${SCRATCH:-.build-release}
DEB_COMPRESS=${DEB_COMPRESS:-xz}
PACKAGES=${PACKAGES:-jit-access jit-access-server}
ARCH=$(dpkg --print-architecture)
[ "$ARCH" = amd64 ] || { echo "build-deb: only amd64 is packaged (this is $ARCH)" >&2; exit 1; }
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
VERSION=$(dpkg-parsechangelog -l packaging/changelog -S Version)
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l packaging/changelog -S Timestamp)
export SOURCE_DATE_EPOCH
FLAGS="-c release --static-swift-stdlib --scratch-path $SCRATCH -Xlinker -z -Xlinker now"
case "$DEB_COMPRESS" in
    xz) Z="-Zxz -z9" ;;
    zstd) Z="-Zzstd -z19" ;;
    *) echo "build-deb: DEB_COMPRESS is xz or zstd" >&2; exit 1 ;;
esac
mkdir -p dist

# strip as dh_strip does.
strip_binary() { strip --remove-section=.comment --remove-section=.note "$@"; }

# The program's version must be the package's.
check_version() {
    v=$("$1" --version)
    [ "$v" = "$VERSION" ] || { echo "build-deb: '$(basename "$1") --version' says '$v' but packaging/changelog says $VERSION; make them agree" >&2; exit 1; }
}

# man pages: gzip -9n into $ROOT/usr/share/man/manN/.
install_man() {
    for page in "$@"; do
        section=${page##*.}
        mkdir -p "$ROOT/usr/share/man/man$section"
        gzip -9n < "$page" > "$ROOT/usr/share/man/man$section/$(basename "$page").gz"
    done
}

# The doc folder, the lintian overrides and the maintainer scripts of package $1 from folder $2.
install_common() {
    mkdir -p "$ROOT/usr/share/doc/$1" "$ROOT/usr/share/lintian/overrides" "$ROOT/DEBIAN"
    install -m 0644 "packaging/lintian/$1" "$ROOT/usr/share/lintian/overrides/$1"
    install -m 0644 packaging/copyright "$ROOT/usr/share/doc/$1/copyright"
    gzip -9n < packaging/changelog > "$ROOT/usr/share/doc/$1/changelog.gz"
    gzip -9n < packaging/README.md > "$ROOT/usr/share/doc/$1/README.md.gz"
    for s in postinst prerm postrm; do install -m 0755 "$2/$s" "$ROOT/DEBIAN/$s"; done
    install -m 0644 "$2/conffiles" "$ROOT/DEBIAN/conffiles"
}

# Control file (Depends: dpkg-shlibdeps of the ELF files $3..., then $2), md5sums, dates, dpkg-deb.
finish_package() {
    pkg=$1 extra=$2 template=$3
    shift 3
    rm -rf "$STAGE/shlibs"
    mkdir -p "$STAGE/shlibs/debian"
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" > "$STAGE/shlibs/debian/control"
    elfs=""
    for f in "$@"; do elfs="$elfs -e../root/$f"; done
    shlibs=$(cd "$STAGE/shlibs" && dpkg-shlibdeps -O $elfs 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    [ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies for $pkg" >&2; exit 1; }
    DEPENDS="$shlibs, $extra"
    SIZE=$(du -s -k --apparent-size --exclude=DEBIAN "$ROOT" | cut -f1)
    sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@DEPENDS@/$DEPENDS/" \
        "$template" > "$ROOT/DEBIAN/control"
    (cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$ROOT/DEBIAN/md5sums"
    chmod 0644 "$ROOT/DEBIAN/md5sums" "$ROOT/DEBIAN/control"
    # Reproducible: every file dated by the changelog entry.
    find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    out=dist/${pkg}_${VERSION}_${ARCH}.deb
    rm -f "dist/${pkg}_"*"_$ARCH.deb"
    dpkg-deb --root-owner-group $Z --build "$ROOT" "$out" >/dev/null
    bytes=$(stat -c %s "$out")
    echo "build-deb: $out: $(awk "BEGIN { printf \"%.1f\", $bytes / 1048576 }") MB ($bytes bytes; installed $((SIZE / 1024)) MB)"
    echo "build-deb: Depends: $DEPENDS"
}

build_host() {
echo "build-deb: jit-access $VERSION: release build (static Swift stdlib)"
# The host package has no control plane in it (Package.swift: JIT_HOST_ONLY): smaller binary, less RSS.
JIT_HOST_ONLY=1 $SWIFT build $FLAGS --product jit-multicall
BIN=$(JIT_HOST_ONLY=1 $SWIFT build $FLAGS --show-bin-path)/jit-multicall
echo "build-deb: pam_jit.so (make -C pam release)"
make -s -C pam release

STAGE=.build-deb/jit-access
ROOT=$STAGE/root
rm -rf "$STAGE"
mkdir -p "$ROOT/usr/sbin" "$ROOT/usr/bin" "$ROOT/lib/$MULTIARCH/security" \
    "$ROOT/lib/systemd/system" "$ROOT/etc/jit" "$ROOT/usr/share/pam-configs" \
    "$ROOT/usr/share/bash-completion/completions"

# The binaries, stripped as dh_strip does.
install -m 0755 "$BIN" "$ROOT/usr/sbin/jitd"
strip_binary "$ROOT/usr/sbin/jitd"
ln -s ../sbin/jitd "$ROOT/usr/bin/jit"
install -m 0644 pam/pam_jit.so "$ROOT/lib/$MULTIARCH/security/pam_jit.so"
strip_binary --strip-unneeded "$ROOT/lib/$MULTIARCH/security/pam_jit.so"

check_version "$ROOT/usr/bin/jit"
check_version "$ROOT/usr/sbin/jitd"

install -m 0644 packaging/jit.yaml "$ROOT/etc/jit/jit.yaml"
install -m 0644 packaging/jitd.service "$ROOT/lib/systemd/system/jitd.service"
install -m 0644 packaging/pam-config "$ROOT/usr/share/pam-configs/jit"
# bash-completion sources the file: no #! line.
"$ROOT/usr/bin/jit" --generate-completion-script bash | sed '1{/^#!/d}' > "$ROOT/usr/share/bash-completion/completions/jit"
chmod 0644 "$ROOT/usr/share/bash-completion/completions/jit"
# Every page but jitd-server(8), which is the server package's.
install_man $(ls packaging/man/*.[1-8] | grep -v '/jitd-server\.8$')
[ -f packaging/man/pam_jit.8 ] || echo "build-deb: note: packaging/man/pam_jit.8 is missing; the package has no pam_jit(8)" >&2
install_common jit-access packaging/debian
finish_package jit-access "libpam-runtime (>= 1.0.1-6), sudo | sudo-ldap" packaging/debian/control.in \
    usr/sbin/jitd "lib/$MULTIARCH/security/pam_jit.so"
}

build_server() {
echo "build-deb: jit-access-server $VERSION: release build (static Swift stdlib, with the control plane)"
$SWIFT build $FLAGS --product jitd
BIN=$($SWIFT build $FLAGS --show-bin-path)/jitd
STAGE=.build-deb/jit-access-server
ROOT=$STAGE/root
rm -rf "$STAGE"
mkdir -p "$ROOT/usr/sbin" "$ROOT/lib/systemd/system" "$ROOT/etc/jit"
install -m 0755 "$BIN" "$ROOT/usr/sbin/jitd-server"
strip_binary "$ROOT/usr/sbin/jitd-server"
check_version "$ROOT/usr/sbin/jitd-server"
install -m 0644 packaging/server/server.yaml "$ROOT/etc/jit/server.yaml"
install -m 0644 packaging/server/jit-access-server.service "$ROOT/lib/systemd/system/jit-access-server.service"
install_man packaging/man/jitd-server.8
install_common jit-access-server packaging/server/debian
finish_package jit-access-server "adduser" packaging/server/debian/control.in usr/sbin/jitd-server
}

for p in $PACKAGES; do
    case "$p" in
        jit-access) build_host ;;
        jit-access-server) build_server ;;
        *) echo "build-deb: PACKAGES names jit-access and/or jit-access-server, not '$p'" >&2; exit 1 ;;
    esac
done
