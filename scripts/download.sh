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
#
# Sophgo's LLM-TPU bmodels (sophgo/LLM-TPU models/Qwen2_5 and models/Qwen3 README.md list these
# dfss links) with the model's config folder for --token (tokenizer.json, tokenizer_config.json,
# generation_config.json, config.json from the Hugging Face repository the bmodel was converted
# from; llm_convert.py copies the same files beside its bmodels):
#
#   scripts/download.sh qwen2.5-3b | qwen2.5-7b | qwen3-4b | qwen3-4b-8k | deepseek-r1-1.5b | deepseek-r1-7b
#
# into models/<item>/ (the bmodel) and models/<item>/config/; DeepSeek-R1-Distill comes from
# Sophgo as one zip (bmodel and config), unpacked into models/<item>/. The script prints the
# --bmodel/--token flags to use. Environment: EDGECHAT_HF_BASE (default https://huggingface.co).
# Idempotent: a file already in place is kept (the tokenizer only if its sha256 matches), so a
# rerun downloads only what is missing. Downloads land in a temporary folder beside the target
# and are moved into place only when complete. Needs ~15 GB free for both bmodels.
# Environment: PYTHON (default python3); EDGECHAT_ROOT (default: this checkout);
# EDGECHAT_SKIP_SHA256=1 accepts a tokenizer.model whose sha256 differs.
set -euo pipefail

ROOT="${EDGECHAT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"
DFSS_BASE="open@sophgo.com:sophon-demo/baichuan2"
LLM_TPU_BASE="open@sophgo.com:/ext_model_information/LLM/LLM-TPU"
HF_BASE="${EDGECHAT_HF_BASE:-https://huggingface.co}"
CONFIG_FILES=(tokenizer.json tokenizer_config.json generation_config.json config.json)
# item -> "bmodel-or-zip|hugging-face-repo" (sophgo/LLM-TPU READMEs, read 2026-12; no sizes or
# hashes are published for them, so only "present and non-empty" is checked)
declare -A LLM_TPU=(
  [qwen2.5-3b]="qwen2.5-3b-instruct-gptq-int4_w4bf16_seq2048_bm1684x_1dev_20250620_134431.bmodel|Qwen/Qwen2.5-3B-Instruct-GPTQ-Int4"
  [qwen2.5-7b]="qwen2.5-7b-instruct-awq_w4bf16_seq2048_bm1684x_1dev_20250616_191537.bmodel|Qwen/Qwen2.5-7B-Instruct-AWQ"
  [qwen3-4b]="qwen3-4b-awq_w4bf16_seq512_bm1684x_1dev_20250514_161445.bmodel|Qwen/Qwen3-4B-AWQ"
  [qwen3-4b-8k]="qwen3-4b-awq_w4bf16_seq8192_bm1684x_1dev_20250514_161732.bmodel|Qwen/Qwen3-4B-AWQ"
  [deepseek-r1-1.5b]="deepseek-r1-distill-qwen-1-5b.zip|"
  [deepseek-r1-7b]="deepseek-r1-distill-qwen-7b.zip|"
)

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

# fetch NAME DIR [BASE]: download NAME into a fresh temporary folder inside DIR, left in $TMP.
fetch() {
  local name="$1" dir="$2" base="${3:-$DFSS_BASE}"
  mkdir -p "$dir"
  TMP="$(mktemp -d "$dir/.download.XXXXXX")"
  TMP_DIRS+=("$TMP")
  echo "downloading $name with dfss ..."
  if ! (cd "$TMP" && "$PYTHON" -m dfss --url="$base/$name" >"$TMP/.dfss.log" 2>&1); then
    tail -n 2 "$TMP/.dfss.log" >&2 || true
    die "could not download $name from $base: no network, or Sophgo's server is unreachable. Nothing was installed; rerun when online."
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

# get_config REPO DIR: the tokenizer and chat template of Hugging Face's REPO into DIR (no model
# code: *.py files are never fetched, and edgechat never runs any).
get_config() {
  local repo="$1" dir="$2" file
  if [ -s "$dir/tokenizer.json" ] && [ -s "$dir/tokenizer_config.json" ]; then
    echo "have ${dir#"$ROOT"/}"
    return
  fi
  mkdir -p "$dir"
  TMP="$(mktemp -d "$dir/.download.XXXXXX")"
  TMP_DIRS+=("$TMP")
  for file in "${CONFIG_FILES[@]}"; do
    echo "downloading $repo/$file ..."
    "$PYTHON" - "$HF_BASE/$repo/resolve/main/$file" "$TMP/$file" <<'PY' ||
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
      die "could not download $file of $repo from $HF_BASE: no network? Nothing was installed; rerun when online."
  done
  mv "$TMP"/*.json "$dir/"
  echo "got ${dir#"$ROOT"/} (${CONFIG_FILES[*]})"
}

get_llm_tpu() {
  local item="$1" entry="${LLM_TPU[$1]}" dir="$ROOT/models/$1"
  local file="${entry%%|*}" repo="${entry#*|}" bmodel token
  if [ -z "$(find "$dir" -maxdepth 3 -name '*.bmodel' -size +0 2>/dev/null | head -n 1)" ]; then
    ensure_dfss
    fetch "$file" "$dir" "$LLM_TPU_BASE"
    case "$file" in
      *.zip)
        "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$TMP/$file" "$dir" ||
          die "$file is not a zip archive; rerun to retry" ;;
      *) mv "$TMP/$file" "$dir/$file" ;;
    esac
    echo "got models/$item/$file (no published size or sha256 to check)"
  else
    echo "have models/$item bmodel"
  fi
  [ -z "$repo" ] || get_config "$repo" "$dir/config"
  bmodel="$(find "$dir" -maxdepth 3 -name '*.bmodel' | head -n 1)"
  token="$(dirname "$(find "$dir" -maxdepth 4 -name tokenizer.json | head -n 1)")"
  echo "run: python3 baichuan2.py --bmodel ${bmodel#"$ROOT"/} --token ${token#"$ROOT"/}"
}

main() {
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=(int8 int4 tokenizer)
  for item in "${wanted[@]}"; do
    case "$item" in
      int8 | int4) get_bmodel "$item" ;;
      tokenizer) get_tokenizer ;;
      *)
        [ -n "${LLM_TPU[$item]+x}" ] ||
          die "unknown item '$item': choose from int8 int4 tokenizer ${!LLM_TPU[*]}"
        get_llm_tpu "$item" ;;
    esac
  done
}

main "$@"
