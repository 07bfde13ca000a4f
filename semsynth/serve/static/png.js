// Grey PNG encoder: a canvas can only export RGBA, and a label map must reach the server as a
// single-channel id map (8 or 16 bit), which semsynth reads exactly as written.

const SIGNATURE = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// values: integers per pixel, row-major; depth 8 or 16. Returns a Blob of type image/png.
export async function encodeGreyPNG(values, width, height, depth) {
  const bytes = depth / 8;
  const stride = 1 + width * bytes; // each row starts with its filter type, 0 = none
  const raw = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    let o = y * stride + 1;
    for (let x = 0, i = y * width; x < width; x++, i++) {
      const v = values[i];
      if (depth === 16) { raw[o++] = v >>> 8; raw[o++] = v & 255; } else raw[o++] = v;
    }
  }
  const header = new Uint8Array(13);
  const h = new DataView(header.buffer);
  h.setUint32(0, width);
  h.setUint32(4, height);
  header[8] = depth; // then colour type 0 (grey), compression 0, filter 0, no interlace
  // "deflate" in the Compression Streams API is the zlib format, which is what IDAT holds.
  const zipped = await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate")))
    .arrayBuffer();
  return new Blob([SIGNATURE, chunk("IHDR", header), chunk("IDAT", new Uint8Array(zipped)),
    chunk("IEND", new Uint8Array(0))], { type: "image/png" });
}
