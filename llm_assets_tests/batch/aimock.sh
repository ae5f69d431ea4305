#!/usr/bin/env bash
# Install @copilotkit/aimock (pinned) under .cache/aimock, once. Prints its llmock binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.cache/aimock/node_modules/.bin/llmock
if [ ! -x "$BIN" ]; then
  npm install --silent --no-audit --no-fund --prefix .cache/aimock @copilotkit/aimock@1.43.0 >&2
fi
echo "$PWD/$BIN"
