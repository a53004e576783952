#!/usr/bin/env bash
# Fetch what sophon-demo's Baichuan2 sample downloads, the way it does (Sophgo's `dfss` tool from
# PyPI, `python3 -m dfss --url=open@sophgo.com:...`):
#
#   models/BM1684X/baichuan2-7b_int8_1dev.bmodel   (int8, needs >= 9216 MB TPU memory on SoC)
#   models/BM1684X/baichuan2-7b_int4_1dev.bmodel   (int4, needs >= 6144 MB)
#   token_config/tokenizer.model                   (from the sample's token_config.zip; the json
#                                                   files beside it are tracked in git)
#
# Usage: scripts/download.sh [int8] [int4] [tokenizer]     (no argument: all three)
# Idempotent: a file already in place is kept (the tokenizer only if its sha256 matches), so a
# rerun downloads only what is missing. Downloads land in a temporary folder beside the target
# and are moved into place only when complete. Needs ~15 GB free for both bmodels.
# Environment: PYTHON (default python3); EDGECHAT_ROOT (default: this checkout);
# EDGECHAT_SKIP_SHA256=1 accepts a tokenizer.model whose sha256 differs.
set -euo pipefail

ROOT="${EDGECHAT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"
DFSS_BASE="open@sophgo.com:sophon-demo/baichuan2"

# What is known about the files. The seed publishes no sizes or hashes for its bmodels, so for
# them only "present and non-empty" is checked (sizes/sha256 unknown; none invented here).
# tokenizer.model: Baichuan2's sentencepiece model, 2001107 bytes; sha256 measured on the copy
# in sophgo/LLM-TPU (models/Baichuan2/tokenizer/tokenizer.model, commit d581e7b), which is the
# same Baichuan2 tokenizer the sample's token_config.zip carries.
TOKENIZER_SHA256="79452955be6b419a65984273a9f08af86042e1c2a75ee3ba989cbf620a133cc2"
TOKENIZER_SIZE=2001107

TMP=""
TMP_DIRS=()
cleanup() {
  local d
  for d in "${TMP_DIRS[@]:-}"; do
    if [ -n "$d" ]; then rm -rf "$d"; fi
  done
}
trap cleanup EXIT

die() {
  echo "download.sh: $*" >&2
  exit 1
}

sha256_of() {
  "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

size_of() { wc -c <"$1" | tr -d ' '; }

ensure_dfss() {
  "$PYTHON" -c 'import dfss' 2>/dev/null && return
  echo "installing dfss (Sophgo's download tool) from PyPI ..."
  "$PYTHON" -m pip install --upgrade dfss >/dev/null ||
    die "cannot install dfss from PyPI (pip install dfss): no network? Nothing was downloaded."
}

# fetch NAME DIR: download NAME into a fresh temporary folder inside DIR, left in $TMP.
fetch() {
  local name="$1" dir="$2"
  mkdir -p "$dir"
  TMP="$(mktemp -d "$dir/.download.XXXXXX")"
  TMP_DIRS+=("$TMP")
  echo "downloading $name with dfss ..."
  if ! (cd "$TMP" && "$PYTHON" -m dfss --url="$DFSS_BASE/$name" >"$TMP/.dfss.log" 2>&1); then
    tail -n 2 "$TMP/.dfss.log" >&2 || true
    die "could not download $name from $DFSS_BASE: no network, or Sophgo's server is unreachable. Nothing was installed; rerun when online."
  fi
  [ -s "$TMP/$name" ] || die "dfss reported success but $name is missing or empty; rerun to retry."
}

get_bmodel() {
  local name="baichuan2-7b_$1_1dev.bmodel" dir="$ROOT/models/BM1684X"
  if [ -s "$dir/$name" ]; then
    echo "have models/BM1684X/$name"
    return
  fi
  ensure_dfss
  fetch "$name" "$dir"
  mv "$TMP/$name" "$dir/$name"
  echo "got models/BM1684X/$name ($(size_of "$dir/$name") bytes; no published size or sha256 to check)"
}

tokenizer_ok() {
  [ "$(size_of "$1")" = "$TOKENIZER_SIZE" ] && [ "$(sha256_of "$1")" = "$TOKENIZER_SHA256" ] && return
  [ "${EDGECHAT_SKIP_SHA256:-0}" = "1" ]
}

get_tokenizer() {
  local dest="$ROOT/token_config/tokenizer.model"
  if [ -e "$dest" ]; then
    tokenizer_ok "$dest" && { echo "have token_config/tokenizer.model"; return; }
    die "token_config/tokenizer.model exists but is not Baichuan2's (sha256 differs): remove it and rerun, or set EDGECHAT_SKIP_SHA256=1 to keep it."
  fi
  ensure_dfss
  fetch token_config.zip "$ROOT/token_config"
  "$PYTHON" - "$TMP/token_config.zip" "$TMP/tokenizer.model" <<'PY' || die "token_config.zip holds no tokenizer.model"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    member = next(n for n in z.namelist() if n.rsplit("/", 1)[-1] == "tokenizer.model")
    with z.open(member) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  tokenizer_ok "$TMP/tokenizer.model" ||
    die "the downloaded tokenizer.model has sha256 $(sha256_of "$TMP/tokenizer.model"), expected $TOKENIZER_SHA256; not installed (EDGECHAT_SKIP_SHA256=1 accepts it)."
  mv "$TMP/tokenizer.model" "$dest"
  echo "got token_config/tokenizer.model (sha256 checked)"
}

main() {
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=(int8 int4 tokenizer)
  for item in "${wanted[@]}"; do
    case "$item" in
      int8 | int4) get_bmodel "$item" ;;
      tokenizer) get_tokenizer ;;
      *) die "unknown item '$item': choose from int8 int4 tokenizer" ;;
    esac
  done
}

main "$@"
