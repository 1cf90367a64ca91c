// dist/ is committed (the gateway binary embeds dist/gateway-client.js with
// include_str!, so `cargo build` needs no npm). This checks it matches src/.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

test("dist/ is up to date with src/ (run `npm run build` and commit dist/)", () => {
  const out = mkdtempSync(path.join(tmpdir(), "gw-dist-"));
  const tsc = path.join(PKG, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", path.join(PKG, "tsconfig.json"), "--outDir", out], { stdio: "inherit" });
  const built = readdirSync(out).sort();
  const committed = readdirSync(path.join(PKG, "dist")).sort();
  assert.deepEqual(committed, built);
  for (const f of built) {
    const want = readFileSync(path.join(out, f), "utf8");
    const have = readFileSync(path.join(PKG, "dist", f), "utf8");
    assert.ok(have === want, `dist/${f} is stale: run \`npm run build\` in clients/js and commit dist/`);
  }
});
