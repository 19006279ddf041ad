#!/usr/bin/env node
// Builds the client and checks the committed build.
//   node scripts/build.mjs dist       build into dist/ (what is committed and served at /client.js)
//   node scripts/build.mjs --check    build into a temporary directory, fail unless it equals
//                                     dist/ byte for byte, print the size and check the budget
//   node scripts/build.mjs --test DIR type-check, and compile each module unbundled into DIR for
//                                     the unit tests
// Output: herald.js (ESM bundle), herald.min.js (minified; served by herald), types/*.d.ts.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const BUDGET = 6 * 1024; // bytes, minified + gzip
const tsc = join(root, 'node_modules/typescript/bin/tsc');

async function build(out) {
  rmSync(out, { recursive: true, force: true });
  execFileSync(process.execPath, [tsc, '-p', root, '--outDir', join(out, 'types')], { stdio: 'inherit' });
  const common = {
    entryPoints: [join(root, 'src/index.ts')],
    bundle: true,
    format: 'esm',
    target: 'es2020',
    platform: 'browser',
    legalComments: 'none',
    charset: 'utf8',
    logLevel: 'warning',
    absWorkingDir: root, // the bundle's path comments do not depend on the caller's directory
  };
  await esbuild.build({ ...common, outfile: join(out, 'herald.js') });
  await esbuild.build({ ...common, outfile: join(out, 'herald.min.js'), minify: true });
}

const files = (dir) =>
  readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? files(join(dir, f)) : [join(dir, f)]));

function size(dir) {
  const min = readFileSync(join(dir, 'herald.min.js'));
  const gz = gzipSync(min, { level: 9 }).length;
  console.log(`herald.min.js: ${min.length} bytes minified, ${gz} bytes gzip (budget ${BUDGET})`);
  return gz;
}

const [mode, arg] = process.argv.slice(2);
if (mode === '--test') {
  execFileSync(process.execPath, [tsc, '-p', root, '--noEmit'], { stdio: 'inherit' });
  const out = join(root, arg || '.build');
  rmSync(out, { recursive: true, force: true });
  const src = join(root, 'src');
  await esbuild.build({
    entryPoints: readdirSync(src).map((f) => join(src, f)),
    outdir: out,
    format: 'esm',
    target: 'es2020',
    logLevel: 'warning',
  });
} else if (mode === '--check') {
  const dist = join(root, 'dist');
  const tmp = mkdtempSync(join(tmpdir(), 'herald-client-'));
  try {
    await build(tmp);
    const want = files(tmp).map((f) => relative(tmp, f)).sort();
    const have = files(dist).map((f) => relative(dist, f)).sort();
    const differ = [...new Set([...want, ...have])].filter((f) => {
      try {
        return !readFileSync(join(tmp, f)).equals(readFileSync(join(dist, f)));
      } catch {
        return true;
      }
    });
    if (differ.length) {
      console.error(`clients/js/dist differs from a fresh build: ${differ.join(', ')}; run npm run build and commit dist/`);
      process.exitCode = 1;
    } else console.log('clients/js/dist matches a fresh build');
    if (size(tmp) > BUDGET) {
      console.error(`herald.min.js is over the ${BUDGET}-byte budget (minified + gzip)`);
      process.exitCode = 1;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else if (mode) {
  await build(join(root, mode));
  size(join(root, mode));
} else {
  console.error('usage: node scripts/build.mjs DIR | --check | --test [DIR]');
  process.exitCode = 2;
}
