// What every page of geodrop builds its DOM and reads its JSON with (the dashboard, the placement console).
// Every node is made here, from text: nothing the data holds is ever parsed as markup. A style is set through the
// CSSOM, which the pages' CSP (no inline style) allows.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") Object.assign(node.style, v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// The body of a JSON answer; an error answer (the one error shape) throws with its status, code and details.
export async function getJSON(url, options) {
  const resp = await fetch(url, options);
  const body = await resp.json();
  if (!resp.ok) {
    const error = body.error || {};
    throw Object.assign(new Error(error.message || resp.statusText),
      { status: resp.status, code: error.code, field: error.field, details: error.details });
  }
  return body;
}
