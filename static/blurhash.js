// blurhash.js — owns turning an image's `blur_hash` (from Unsplash) into a
// tiny locally generated placeholder (a data: URL made here, never taken
// from the API), shown behind the photo while it loads. Invalid hashes are
// ignored. Results are cached by hash.

const CHARS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~';
const W = 16;
const H = 12;
const cache = new Map();

function decode83(str) {
  let v = 0;
  for (const c of str) {
    const d = CHARS.indexOf(c);
    if (d < 0) throw new Error('bad blurhash');
    v = v * 83 + d;
  }
  return v;
}

function toLinear(v) {
  const x = v / 255;
  return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
}

function toSrgb(v) {
  const x = Math.max(0, Math.min(1, v));
  return x <= 0.0031308 ? Math.round(x * 12.92 * 255) : Math.round((1.055 * x ** (1 / 2.4) - 0.055) * 255);
}

const signPow = (v, e) => Math.sign(v) * Math.abs(v) ** e;

function decodePixels(hash) {
  const size = decode83(hash[0]);
  const ny = Math.floor(size / 9) + 1;
  const nx = (size % 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error('bad blurhash length');
  const max = (decode83(hash[1]) + 1) / 166;
  const colors = [];
  const dc = decode83(hash.slice(2, 6));
  colors.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const v = decode83(hash.slice(4 + i * 2, 6 + i * 2));
    colors.push([
      signPow((Math.floor(v / 361) - 9) / 9, 2) * max,
      signPow(((Math.floor(v / 19) % 19) - 9) / 9, 2) * max,
      signPow(((v % 19) - 9) / 9, 2) * max,
    ]);
  }
  const px = new Uint8ClampedArray(W * H * 4);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let r = 0; let g = 0; let b = 0;
      for (let j = 0; j < ny; j++) {
        const by = Math.cos((Math.PI * y * j) / H);
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / W) * by;
          const c = colors[i + j * nx];
          r += c[0] * basis; g += c[1] * basis; b += c[2] * basis;
        }
      }
      const o = 4 * (x + y * W);
      px[o] = toSrgb(r); px[o + 1] = toSrgb(g); px[o + 2] = toSrgb(b); px[o + 3] = 255;
    }
  }
  return px;
}

/** A data: URL for the hash's placeholder, or null when it cannot be decoded. */
export function blurhashUrl(hash) {
  if (typeof hash !== 'string' || hash.length < 6 || hash.length > 200) return null;
  if (cache.has(hash)) return cache.get(hash);
  let url = null;
  try {
    const canvas = document.createElement('canvas');
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext('2d');
    ctx.putImageData(new ImageData(decodePixels(hash), W, H), 0, 0);
    url = canvas.toDataURL();
  } catch {
    url = null;
  }
  if (cache.size > 500) cache.delete(cache.keys().next().value);
  cache.set(hash, url);
  return url;
}

/** Put the placeholder behind `el` (a thumbnail or photo frame). */
export function applyBlurhash(el, hash) {
  const url = blurhashUrl(hash);
  if (url) {
    el.style.backgroundImage = `url("${url}")`;
    el.style.backgroundSize = 'cover';
  }
}
