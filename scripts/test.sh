#!/usr/bin/env bash
# baton's tests, as the README says. Installs what they need from Debian's packages when it is
# missing (the dashboard test drives real headless Chromium through chromedriver; the drain
# driver's test runs real HAProxy; the apt and dnf tests serve real packages from local
# repositories).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
# The apt test builds packages with dpkg-deb and indexes a local repository with this.
command -v dpkg-scanpackages >/dev/null 2>&1 || need+=(dpkg-dev)
# The dnf test builds rpms, indexes them as a local repository and installs them with dnf.
command -v dnf >/dev/null 2>&1 || need+=(dnf)
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v createrepo_c >/dev/null 2>&1 || need+=(createrepo-c)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} for the tests"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}"
fi
exec cargo test --workspace "$@"
