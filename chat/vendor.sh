#!/usr/bin/env bash
# `make vendor-js`: fetch the chat page's Markdown parser, HTML sanitizer and code
# highlighter from the npm registry at the versions below, into
# chat/static/chat/vendor/, and write their SHA-256 (tests/test_vendor.py checks them).
# They are committed: the page serves them itself (no CDN), and a fresh machine needs
# no Node.js to run llmserver.
set -euo pipefail
cd "$(dirname "$0")/.."
MARKED=18.3.0
DOMPURIFY=3.5.0
HIGHLIGHT=11.12.0
out=chat/static/chat/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" >/dev/null)
for tgz in "$work"/*.tgz; do mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"; done
cp "$work/marked-$MARKED/package/lib/marked.umd.js" "$out/marked.umd.js"
cp "$work/marked-$MARKED/package/LICENSE" "$out/marked.LICENSE"
cp "$work/dompurify-$DOMPURIFY/package/dist/purify.min.js" "$out/purify.min.js"
cp "$work/dompurify-$DOMPURIFY/package/LICENSE" "$out/dompurify.LICENSE"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/package/highlight.min.js" "$out/highlight.min.js"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/package/styles/github.min.css" "$out/highlight-light.min.css"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/package/styles/github-dark.min.css" "$out/highlight-dark.min.css"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/package/LICENSE" "$out/highlight.LICENSE"
# Their source maps are not shipped: the line naming one would make collectstatic's
# manifest look for it.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/marked.umd.js" "$out/purify.min.js" "$out/highlight.min.js"
(cd "$out" && sha256sum marked.umd.js purify.min.js highlight.min.js highlight-light.min.css highlight-dark.min.css \
  > SHA256SUMS)
cat > "$out/VERSIONS" <<VERSIONS
marked $MARKED (MIT): marked.umd.js
dompurify $DOMPURIFY (MPL-2.0 or Apache-2.0): purify.min.js
@highlightjs/cdn-assets $HIGHLIGHT (BSD-3-Clause): highlight.min.js, highlight-light.min.css (github), highlight-dark.min.css (github-dark)
VERSIONS
echo "vendored: $(tr '\n' ';' < "$out/VERSIONS")"
