#!/usr/bin/env bash
# Checks the Dockerfile without building the image, for machines with no
# Docker daemon or no access to the base images.
#
#   scripts/check-dockerfile.sh                    # the Dockerfile and .dockerignore alone
#   scripts/check-dockerfile.sh target/release/heartbeater
#                                                  # and what the runtime stage needs
#
# Without an argument it reads the Dockerfile: multi-stage, a Rust bookworm
# builder, a debian:bookworm-slim runtime, the release build with cache
# mounts, a non-root USER, HEALTHCHECK, VOLUME (declared after the directory
# is chowned), EXPOSE, ENTRYPOINT/CMD, OCI labels.
#
# With a built binary it also checks, on this host:
#   - every library `ldd` resolves comes from a package of debian:bookworm-slim
#     or one the runtime stage installs (needs dpkg: a Debian-family host);
#   - the glibc / libstdc++ symbol versions it needs exist in bookworm;
#   - the flags of the image's CMD and HEALTHCHECK exist in that binary;
#   - as root: the binary, run as the image's uid with a data directory owned
#     by that uid, starts, answers the HEALTHCHECK's `heartbeat`, and exits 0
#     on SIGTERM.
#
# Limits: it does not build or run the image. The slim package list below
# is copied from the published image (debian:bookworm-slim, 2026-09) and can
# drift; the libraries checked are this host's, not the image's (the symbol
# version check is what covers a build host newer than bookworm); a binary
# that loads a library with dlopen() at run time is not seen by ldd.
# Docker-only behaviour (volume initialisation, HEALTHCHECK timing, signal
# delivery by `docker stop`) is not exercised.

# ok() always succeeds, so `check && ok ... || bad ...` is an if-then-else.
# shellcheck disable=SC2015
set -euo pipefail
BINARY=${1:+$(realpath -- "$1")}
cd "$(dirname "$0")/.."
DOCKERFILE=${DOCKERFILE:-Dockerfile}

# The binary packages of debian:bookworm-slim.
BOOKWORM_SLIM="adduser apt base-files base-passwd bash bsdutils coreutils dash
debconf debian-archive-keyring debianutils diffutils dpkg e2fsprogs findutils
gcc-12-base gpgv grep gzip hostname init-system-helpers libacl1 libapt-pkg6.0
libattr1 libaudit-common libaudit1 libblkid1 libbz2-1.0 libc-bin libc6 libcap-ng0
libcap2 libcom-err2 libcrypt1 libdb5.3 libdebconfclient0 libext2fs2 libffi8
libgcc-s1 libgcrypt20 libgmp10 libgnutls30 libgpg-error0 libhogweed6 libidn2-0
liblz4-1 liblzma5 libmd0 libmount1 libnettle8 libp11-kit0 libpam-modules
libpam-modules-bin libpam-runtime libpam0g libpcre2-8-0 libseccomp2 libselinux1
libsemanage-common libsemanage2 libsepol2 libsmartcols1 libss2 libstdc++6
libsystemd0 libtasn1-6 libtinfo6 libudev1 libunistring2 libuuid1 libxxhash0
libzstd1 login logsave mawk mount ncurses-base ncurses-bin passwd perl-base sed
sysvinit-utils tar tzdata usr-is-merged util-linux util-linux-extra zlib1g"
# The newest symbol versions bookworm's glibc 2.36 and libstdc++ (GCC 12) provide.
MAX_GLIBC=2.36
MAX_GLIBCXX=3.4.30
MAX_CXXABI=1.3.13

failures=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; failures=$((failures + 1)); }
note() { echo "note  $*"; }

[ -f "$DOCKERFILE" ] || { echo "no $DOCKERFILE" >&2; exit 1; }

# One instruction per line: comments dropped, continuations joined.
instructions=$(awk '
    /^[[:space:]]*#/ { next }
    {
        line = $0
        if (sub(/\\[[:space:]]*$/, "", line)) { acc = acc line " "; next }
        acc = acc line
        if (acc ~ /[^[:space:]]/) print acc
        acc = ""
    }
    END { if (acc ~ /[^[:space:]]/) print acc }
' "$DOCKERFILE" | sed -E 's/[[:space:]]+/ /g; s/^ //')

# ARG defaults before the first FROM, to resolve `FROM ${NAME}`.
declare -A global_args=()
while read -r name value; do
    global_args[$name]=$value
done < <(printf '%s\n' "$instructions" | awk '/^FROM /{exit} /^ARG [A-Za-z_]+=/{sub(/^ARG /,""); split($0,kv,"="); print kv[1], kv[2]}')
resolve() {
    local text=$1 name
    for name in "${!global_args[@]}"; do
        text=${text//\$\{$name\}/${global_args[$name]}}
        text=${text//\$$name/${global_args[$name]}}
    done
    printf '%s' "$text"
}

from_count=$(printf '%s\n' "$instructions" | grep -c '^FROM ' || true)
final=$(printf '%s\n' "$instructions" | awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END{printf "%s", buf}')
builder=$(printf '%s\n' "$instructions" | awk 'tolower($0) ~ /^from .* as builder$/{on=1} /^FROM /&&on&&tolower($0) !~ / as builder$/{on=0} on')
final_from=$(resolve "$(printf '%s\n' "$final" | head -1 | awk '{print $2}')")
builder_from=$(resolve "$(printf '%s\n' "$builder" | head -1 | awk '{print $2}')")
in_final() { printf '%s\n' "$final" | grep -E "$@"; }

echo "== $DOCKERFILE"
if [ "$from_count" -ge 2 ] && [ -n "$builder" ]; then
    ok "multi-stage: $from_count stages, a 'builder' stage"
else
    bad "expected a multi-stage build with a stage named 'builder' ($from_count FROM lines)"
fi
case $builder_from in
    rust:*bookworm*) ok "builder from $builder_from" ;;
    *) bad "builder should be from the official rust bookworm image, is '$builder_from'" ;;
esac
[ "$final_from" = "debian:bookworm-slim" ] && ok "runtime from $final_from" \
    || bad "runtime stage should be from debian:bookworm-slim, is '$final_from'"
printf '%s\n' "$builder" | grep -q 'apt-get install.*libclang-dev' && printf '%s\n' "$builder" | grep -q 'apt-get install.* clang' \
    && ok "builder installs libclang-dev and clang" || bad "builder does not install libclang-dev and clang"
build_line=$(printf '%s\n' "$builder" | grep 'cargo build' || true)
[[ $build_line == *"cargo build --release -p heartbeater-cli --locked"* ]] \
    && ok "builder runs cargo build --release -p heartbeater-cli --locked" \
    || bad "builder does not run 'cargo build --release -p heartbeater-cli --locked'"
if [[ $build_line == *"--mount=type=cache,target=/usr/local/cargo/registry"* && $build_line =~ --mount=type=cache,target=[^[:space:]]*target ]]; then
    ok "cache mounts for the cargo registry and target/"
    # A cache mount is not in the image: the binary must leave it in the same RUN.
    [[ $build_line =~ (cp|install)[^\&]*target/release/heartbeater ]] \
        && ok "the binary is copied out of the target/ cache mount in the same RUN" \
        || bad "the binary is not copied out of the target/ cache mount in the RUN that builds it"
else
    bad "no BuildKit cache mounts for the cargo registry and target/"
fi
in_final -q '^COPY --from=builder .*/usr/local/bin/heartbeater' \
    && ok "runtime copies the binary from the builder" || bad "runtime does not COPY --from=builder the binary"

user=$(in_final '^USER ' | tail -1 | awk '{print $2}')
user=${user%%:*}
uid=
if [ -z "$user" ]; then
    bad "no USER in the runtime stage: the node would run as root"
elif [ "$user" = root ] || [ "$user" = 0 ]; then
    bad "USER is root"
else
    if [[ $user =~ ^[0-9]+$ ]]; then
        uid=$user
    else
        uid=$(in_final -o "useradd .*--uid [0-9]+" | grep -oE '[0-9]+$' || true)
    fi
    ok "non-root USER $user${uid:+ (uid $uid)}"
    [[ $user =~ ^[0-9]+$ ]] || note "a numeric USER lets runAsNonRoot-style checks see it is not root"
fi
uid=${uid:-10001}

healthcheck=$(in_final '^HEALTHCHECK ' | tail -1 || true)
if [[ $healthcheck =~ CMD\ \[.*\"heartbeater\",\ *\"heartbeat\" ]]; then
    ok "HEALTHCHECK runs the binary's heartbeat command (exec form, no shell or curl needed)"
elif [ -n "$healthcheck" ]; then
    bad "HEALTHCHECK is not an exec-form 'heartbeater heartbeat': $healthcheck"
else
    bad "no HEALTHCHECK in the runtime stage"
fi

volume_line=$(printf '%s\n' "$final" | grep -n '^VOLUME .*/var/lib/heartbeater' | head -1 | cut -d: -f1 || true)
chown_line=$(printf '%s\n' "$final" | grep -nE '(install -d .*-o|chown) .*/var/lib/heartbeater' | head -1 | cut -d: -f1 || true)
if [ -z "$volume_line" ]; then
    bad "no VOLUME /var/lib/heartbeater"
elif [ -z "$chown_line" ]; then
    bad "VOLUME /var/lib/heartbeater, but the directory is never given to the user"
elif [ "$chown_line" -lt "$volume_line" ]; then
    ok "VOLUME /var/lib/heartbeater, declared after the directory is chowned"
else
    bad "VOLUME is declared before /var/lib/heartbeater is chowned: changes after VOLUME are discarded"
fi
in_final -q '^WORKDIR ' && ok "WORKDIR $(in_final '^WORKDIR ' | tail -1 | cut -d' ' -f2)" || bad "no WORKDIR"

exposed=" $(in_final '^EXPOSE ' | cut -d' ' -f2- | tr '\n' ' ') "
for port in 8181/tcp 8181/udp 9181/tcp; do
    [[ $exposed == *" $port "* ]] && ok "EXPOSE $port" || bad "EXPOSE lacks $port"
done
for port in $exposed; do
    [ "${port%%/*}" -ge 1024 ] 2>/dev/null || bad "port $port needs privileges the non-root user lacks"
done

in_final -q '^ENTRYPOINT \["heartbeater"\]$' && ok 'ENTRYPOINT ["heartbeater"]' || bad 'ENTRYPOINT is not ["heartbeater"]'
cmd=$(in_final '^CMD ' | tail -1 || true)
if [[ $cmd == 'CMD ["serve",'* ]]; then
    ok "CMD: ${cmd#CMD }"
    [[ $cmd == *'"--listen", "0.0.0.0:'* ]] || bad "CMD does not listen on 0.0.0.0: port mappings would not reach the node"
    [[ $cmd == *'"--data-dir", "/var/lib/heartbeater"'* ]] || bad "CMD does not keep its data in the volume"
else
    bad "CMD is not an exec-form serve command: $cmd"
fi
for label in title source licenses version; do
    in_final -q "org\.opencontainers\.image\.$label=" && ok "label org.opencontainers.image.$label" \
        || bad "no label org.opencontainers.image.$label"
done
if [ -f .dockerignore ] && grep -qE '^/?target/?$' .dockerignore && grep -qE '^/?\.git/?$' .dockerignore; then
    ok ".dockerignore leaves target/ and .git out of the build context"
else
    bad ".dockerignore missing or does not exclude target/ and .git"
fi

if [ -z "$BINARY" ]; then
    echo "== no binary given: the runtime checks are skipped"
    echo "$failures failed"
    [ "$failures" -eq 0 ]
    exit
fi

echo "== $BINARY"
[ -x "$BINARY" ] || { bad "$BINARY is not an executable file"; echo "$failures failed"; exit 1; }
[ "$(head -c 4 "$BINARY" | od -An -c | tr -d ' ')" = '177ELF' ] || bad "$BINARY is not an ELF file"

runtime_packages=" $BOOKWORM_SLIM $(in_final -o 'apt-get install [^&;|]*' | sed -E 's/apt-get install//; s/ -[^ ]*//g') "
runtime_packages=$(printf '%s' "$runtime_packages" | tr '\n' ' ')
if ! command -v dpkg >/dev/null 2>&1; then
    bad "no dpkg here: cannot tell which packages the binary's libraries come from"
else
    ldd_out=$(ldd "$BINARY" 2>&1) || { bad "ldd failed: $ldd_out"; ldd_out=; }
    while read -r line; do
        [ -n "$line" ] || continue
        if [[ $line == *"not found"* ]]; then
            bad "library not found: $line"
            continue
        fi
        path=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; exit } }' <<<"$line")
        [ -n "$path" ] || continue   # linux-vdso: the kernel's
        pkg=
        for candidate in "$path" "${path#/usr}" "/usr$path" "$(readlink -f "$path")"; do
            pkg=$(dpkg -S "$candidate" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
        done
        if [ -z "$pkg" ]; then
            bad "$path belongs to no package"
        elif [[ $runtime_packages == *" $pkg "* ]]; then
            ok "$(basename "$path") from $pkg"
        else
            bad "$(basename "$path") from $pkg, which debian:bookworm-slim lacks and the Dockerfile does not install"
        fi
    done <<<"$ldd_out"
fi

newest() { grep -aoE "$1[0-9.]+" "$BINARY" | sed "s/^$1//; s/\.$//" | sort -uV | tail -1; }
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }
for spec in "GLIBC_ $MAX_GLIBC glibc" "GLIBCXX_ $MAX_GLIBCXX libstdc++" "CXXABI_ $MAX_CXXABI libstdc++"; do
    read -r prefix max what <<<"$spec"
    need=$(newest "$prefix")
    if [ -z "$need" ]; then
        ok "needs no $prefix symbols"
    elif version_le "$need" "$max"; then
        ok "needs $prefix$need, bookworm's $what has up to $prefix$max"
    else
        bad "needs $prefix$need, newer than bookworm's $what ($prefix$max): build it on bookworm"
    fi
done

serve_help=$("$BINARY" serve --help 2>&1 || true)
heartbeat_help=$("$BINARY" heartbeat --help 2>&1 || true)
for flag in $(grep -oE '"--[a-z-]+"' <<<"$cmd" | tr -d '"'); do
    [[ $serve_help == *" $flag "* || $serve_help == *" $flag"$'\n'* ]] \
        && ok "serve takes $flag (CMD)" || bad "serve has no $flag: the image's CMD would not start"
done
for flag in $(grep -oE '"--[a-z-]+"' <<<"$healthcheck" | tr -d '"'); do
    [[ $heartbeat_help == *" $flag "* || $heartbeat_help == *" $flag"$'\n'* ]] \
        && ok "heartbeat takes $flag (HEALTHCHECK)" || bad "heartbeat has no $flag: the HEALTHCHECK would always fail"
done

if [ "$(id -u)" -ne 0 ]; then
    note "not root: skipping the run as uid $uid (it needs setpriv from root)"
elif ! command -v setpriv >/dev/null 2>&1; then
    note "no setpriv (util-linux): skipping the run as uid $uid"
else
    work=$(mktemp -d)
    node=
    cleanup() {
        if [ -n "$node" ] && kill -0 "$node" 2>/dev/null; then kill -KILL "$node" 2>/dev/null || true; fi
        rm -rf "$work"
    }
    trap cleanup EXIT
    chmod 0755 "$work"
    # A copy the uid can execute: the build output may sit under a private home.
    install -m 0755 "$BINARY" "$work/heartbeater"
    install -d -o "$uid" -g "$uid" -m 0750 "$work/data"
    as_uid() { setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"; }
    http_off=()
    [[ $serve_help == *"--http-listen"* ]] && http_off=(--http-listen off)
    (cd "$work/data" && exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
        "$work/heartbeater" serve --data-dir "$work/data/db" --listen 127.0.0.1:0 "${http_off[@]}") \
        >"$work/out" 2>"$work/err" &
    node=$!
    port=
    for _ in $(seq 1 100); do
        port=$(sed -nE 's/.*listen[ ":]+127\.0\.0\.1:([0-9]+).*/\1/p' "$work/out" | head -1)
        [ -n "$port" ] && break
        kill -0 "$node" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        bad "serve as uid $uid did not start: $(tr '\n' ' ' <"$work/err")"
    else
        ok "serve as uid $uid started on 127.0.0.1:$port with its data in a directory owned by that uid"
        if answer=$(as_uid "$work/heartbeater" heartbeat --server "127.0.0.1:$port" --deadline 2s 2>&1); then
            ok "the HEALTHCHECK's heartbeat, as uid $uid, got an answer: $answer"
        else
            bad "heartbeat as uid $uid failed: $answer"
        fi
        sleep 2
        kill -TERM "$node"
        rc=0
        wait "$node" || rc=$?
        node=
        if [ "$rc" -eq 0 ] && grep -q stopped "$work/out"; then
            ok "SIGTERM: serve stopped and exited 0"
        else
            bad "SIGTERM: serve exited $rc: $(tr '\n' ' ' <"$work/err")"
        fi
        others=$(find "$work/data" ! -uid "$uid" | head -3)
        if [ -f "$work/data/db/CURRENT" ] && [ -z "$others" ]; then
            ok "RocksDB wrote its files in the data directory, all owned by uid $uid"
        else
            bad "data directory not written as expected (CURRENT missing or files of another owner: $others)"
        fi
    fi
fi

echo "$failures failed"
[ "$failures" -eq 0 ]
