// Sizes and times as operators read and type them.
//
// Sizes are binary, as the admin CLI and qemu-img read them: "1G" = "1GiB" = 1073741824 bytes;
// "1.5GiB", "500 MiB" and plain bytes ("4096") are accepted. Parsing is exact (BigInt), so a size
// that is not a whole number of bytes is refused rather than rounded.

const SIZE = /^\s*(\d+)(?:\.(\d+))?\s*(?:([kmgtp])i?)?b?\s*$/i;
const UNITS = "kmgtp";
const PIB = 2 ** 50; // the largest size a device accepts

export class SizeError extends Error {}

export function parseSize(text) {
  const match = SIZE.exec(String(text));
  if (!match) {
    throw new SizeError(`"${String(text).trim()}" is not a size: use bytes or a number with KiB, MiB, GiB, TiB ` +
      "or PiB (binary: 1 GiB = 1073741824 bytes), e.g. 1 GiB, 500 MiB");
  }
  const [, whole, frac = "", unit] = match;
  const scale = 10n ** BigInt(frac.length);
  const factor = unit ? 1024n ** BigInt(UNITS.indexOf(unit.toLowerCase()) + 1) : 1n;
  const numerator = (BigInt(whole) * scale + BigInt(frac || "0")) * factor;
  if (numerator % scale !== 0n) {
    throw new SizeError(`"${String(text).trim()}" is not a whole number of bytes`);
  }
  const bytes = numerator / scale;
  if (bytes > BigInt(PIB)) {
    throw new SizeError(`"${String(text).trim()}" is larger than 1 PiB`);
  }
  return Number(bytes);
}

const NAMES = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatBytes(n) {
  if (n == null || Number.isNaN(Number(n))) return "—";
  let value = Number(n);
  const sign = value < 0 ? "-" : "";
  value = Math.abs(value);
  let i = 0;
  while (value >= 1024 && i < NAMES.length - 1) {
    value /= 1024;
    i += 1;
  }
  const digits = i === 0 || value >= 100 ? 0 : 1;
  const text = value.toFixed(digits).replace(/\.0$/, "");
  return `${sign}${text} ${NAMES[i]}`;
}

export function formatRate(n) {
  return n == null ? "—" : `${formatBytes(n)}/s`;
}

// The API's datetimes are ISO 8601 with an offset; one without is UTC.
export function parseTime(text) {
  if (!text) return null;
  const hasZone = /(?:[zZ]|[+-]\d\d:?\d\d)$/.test(text);
  const ms = Date.parse(hasZone ? text : `${text}Z`);
  return Number.isNaN(ms) ? null : ms;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

export function formatTime(ms) {
  if (ms == null) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatAgo(ms, now) {
  if (ms == null) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min ago`;
  return `${Math.floor(h / 24)} days ago`;
}

export function shortHash(hex) {
  return hex ? `${hex.slice(0, 12)}…` : "—";
}

// A reported error as one line: what went wrong, then when the device tries again (the device says when
// in the error's retry condition: attempts so far and the time of the next one).
export function errorText(err) {
  if (!err) return "";
  return err.retry_condition ? `${err.description} · retry: ${err.retry_condition}` : err.description;
}
