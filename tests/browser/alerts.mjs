// The dashboard's alerts list stays fair: one line per student and kind; a
// repeat updates that line's "×count" (from the alert's `count`) and moves it
// to the top, so one student's flood of alerts cannot push anyone else's off
// the list. In node, with just enough of a fake DOM for view.js (no browser,
// no server). Run by tests/api/browser.rs.

function check(cond, message) {
  if (!cond) {
    console.error(`check failed: ${message}`);
    process.exit(1);
  }
}

class FakeNode {
  constructor(tag) {
    this.tag = tag;
    this.children = [];
    this.parent = null;
    this.text = '';
    this.className = '';
    this.dataset = {};
    this.style = {};
    this.attached = false; // true for the page's own nodes
    this.classList = { toggle() {} };
  }
  get isConnected() {
    for (let n = this; n; n = n.parent) if (n.attached) return true;
    return false;
  }
  get childElementCount() {
    return this.children.length;
  }
  get lastElementChild() {
    return this.children.at(-1) ?? null;
  }
  get textContent() {
    return [this.text, ...this.children.map((c) => c.textContent)].filter(Boolean).join(' ');
  }
  set textContent(t) {
    this.text = String(t);
    this.replaceChildren();
  }
  setAttribute() {}
  append(...nodes) {
    this._insert(nodes, null);
  }
  prepend(...nodes) {
    this._insert(nodes, 0);
  }
  replaceChildren() {
    for (const c of this.children) c.parent = null;
    this.children = [];
  }
  remove() {
    if (!this.parent) return;
    const siblings = this.parent.children;
    siblings.splice(siblings.indexOf(this), 1);
    this.parent = null;
  }
  _insert(nodes, index) {
    const flat = nodes.flatMap((n) => (n.tag === '#fragment' ? n.children.splice(0) : [n]));
    for (const n of flat) {
      if (n.parent && n.parent.children.includes(n)) n.remove();
      n.parent = this;
    }
    this.children.splice(index ?? this.children.length, 0, ...flat);
  }
}

// view.js speaks through the i18n module, which reads these at load.
globalThis.navigator ??= { languages: ['en'] };
globalThis.document = {
  documentElement: {},
  createElement: (tag) => new FakeNode(tag),
  createDocumentFragment: () => new FakeNode('#fragment'),
};
const page = new Map();
const root = {
  querySelector(sel) {
    if (!page.has(sel)) {
      const n = new FakeNode(sel);
      n.attached = true;
      page.set(sel, n);
    }
    return page.get(sel);
  },
};

const { View } = await import('../../web/dashboard/view.js');
const view = new View(root, () => Date.now());
const list = root.querySelector('#alerts');
const lines = () => list.children.map((li) => li.textContent);
const at = new Date().toISOString();
const alert = (student_id, kind, count) => view.alert({ type: 'alert', seq: 0, student_id, kind, at, count });

// s2's alert, then 50 of s1's (the worst case: a server that folds nothing).
alert('s2', 'idle', 1);
for (let i = 1; i <= 50; i++) alert('s1', 'focus_lost', i);
view._render();
check(list.childElementCount === 2, `one line per student and kind: ${JSON.stringify(lines())}`);
check(lines()[0].includes('s1') && lines()[0].endsWith('×50'), `s1's line counts 50: ${lines()[0]}`);
check(lines()[1].includes('s2') && !lines()[1].includes('×'), `s2's alert is still listed: ${lines()[1]}`);

// A repeat after a render moves its line to the top, with the new count.
alert('s2', 'idle', 2);
view._render();
check(list.childElementCount === 2 && lines()[0].includes('s2') && lines()[0].endsWith('×2'), `repeat on top: ${JSON.stringify(lines())}`);
// Another kind is a line of its own.
alert('s1', 'disconnected', 1);
view._render();
check(list.childElementCount === 3, `a new kind, a new line: ${JSON.stringify(lines())}`);

// A full list: 199 other students' alerts survive 1000 more from s1.
for (let i = 0; i < 199; i++) alert(`o${i}`, 'idle', 1);
view._render();
for (let i = 51; i <= 1050; i++) {
  alert('s1', 'focus_lost', i);
  if (i % 100 === 0) view._render();
}
view._render();
const others = lines().filter((l) => / o\d+ /.test(` ${l} `)).length;
check(others >= 197, `others' alerts stay on the list: ${others} of 199`);
check(lines().filter((l) => l.includes('s1') && l.includes('×1050')).length === 1, 's1 holds one focus line');

// The list cleared (another exam watched): entries start afresh.
list.replaceChildren();
view.lists.clear();
alert('s1', 'focus_lost', 1);
view._render();
check(list.childElementCount === 1 && !lines()[0].includes('×'), `fresh after a clear: ${JSON.stringify(lines())}`);

console.log('alerts list: ok');
process.exit(0);
