#!/usr/bin/env bash
# Refresh the web UI's vendored front-end libraries (built files + licences) at pinned versions.
# Uses the ordinary npm client (`npm pack`) against the npm registry; nothing is fetched at run time:
# the page loads only these files from src/ctdl/web/static/vendor/.
#   NiiVue      (BSD-2-Clause): WebGL2 slice views, window/level, label colour tables, 3D render (UMD build)
#   json-editor (MIT):          forms generated from JSON Schema, no build step
#   uPlot       (MIT):          small, fast time-series plots for the live curves
set -euo pipefail
NIIVUE=0.69.0
JSONEDITOR=2.17.2
UPLOT=1.6.32
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/src/ctdl/web/static/vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "@niivue/niivue@$NIIVUE" "@json-editor/json-editor@$JSONEDITOR" "uplot@$UPLOT" >/dev/null
mkdir -p niivue jsoneditor uplot
tar xzf "niivue-niivue-$NIIVUE.tgz" -C niivue --strip-components=1
tar xzf "json-editor-json-editor-$JSONEDITOR.tgz" -C jsoneditor --strip-components=1
tar xzf "uplot-$UPLOT.tgz" -C uplot --strip-components=1
rm -rf "$dest" && mkdir -p "$dest"/{niivue,jsoneditor,uplot}
cp niivue/dist/niivue.umd.js "$dest/niivue/"
# the npm package carries no LICENSE file; its package.json declares BSD-2-Clause (text from the NiiVue repository)
cat > "$dest/niivue/LICENSE" <<'LIC'
BSD 2-Clause License

Copyright (c) 2021, NiiVue authors
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LIC
cp jsoneditor/dist/jsoneditor.js jsoneditor/LICENSE "$dest/jsoneditor/"
[ -f jsoneditor/dist/jsoneditor.js.LICENSE.txt ] && cp jsoneditor/dist/jsoneditor.js.LICENSE.txt "$dest/jsoneditor/"
cp uplot/dist/uPlot.iife.min.js uplot/dist/uPlot.min.css uplot/LICENSE "$dest/uplot/"
cat > "$dest/VERSIONS.txt" <<V
@niivue/niivue $NIIVUE (BSD-2-Clause) dist/niivue.umd.js
@json-editor/json-editor $JSONEDITOR (MIT) dist/jsoneditor.js
uplot $UPLOT (MIT) dist/uPlot.iife.min.js, dist/uPlot.min.css
refreshed by scripts/vendor_web.sh
V
echo "vendored into $dest:"; du -sh "$dest"/*
