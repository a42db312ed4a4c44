// Hash routes: #/ (fleet), #/devices/<name-or-uuid>, #/devices/<d>/volumes/<name-or-uuid>.
// Links use names where they can (readable, shareable) and uuids for names with a "/", which no
// URL path segment can carry to the API.

const enc = encodeURIComponent;

export function refOf(obj) {
  return obj.name && !obj.name.includes("/") ? obj.name : obj.uuid;
}

export function fleetHref() {
  return "#/";
}

export function deviceHref(dev) {
  return `#/devices/${enc(refOf(dev))}`;
}

export function volumeHref(dev, vol) {
  return `#/devices/${enc(refOf(dev))}/volumes/${enc(refOf(vol))}`;
}

export function parseRoute(hash) {
  const parts = String(hash || "").replace(/^#\/?/, "").split("/").filter((p) => p !== "");
  let decoded;
  try {
    decoded = parts.map((p) => decodeURIComponent(p));
  } catch {
    return { name: "unknown" };
  }
  if (decoded.length === 0) return { name: "fleet" };
  if (decoded[0] === "devices" && decoded.length === 2) return { name: "device", device: decoded[1] };
  if (decoded[0] === "devices" && decoded.length === 4 && decoded[2] === "volumes") {
    return { name: "volume", device: decoded[1], volume: decoded[3] };
  }
  return { name: "unknown" };
}
