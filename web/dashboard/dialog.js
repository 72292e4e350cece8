// One modal dialog for every question the dashboard asks: the minutes of
// an extension, a message's text, a termination's reason, and every
// confirmation (end the exam, terminate, deny). A native <dialog> opened
// with showModal(): it traps focus, closes on Escape, and gives the focus
// back to what had it when it closes (said again below for browsers that
// do not). Its texts are set with textContent; names are put in <bdi>.

import { t } from '../i18n/i18n.js';

const el = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/**
 * Asks; resolves with the fields' values ({name: value}) on confirm, or
 * null when cancelled (button, Escape).
 *
 * `title`: text; `about`: optional user string shown in a <bdi> (a
 * student's name); `text`: optional explanation; `fields`: [{name, label,
 * type: 'number'|'text'|'textarea', value, min, max, maxLength, required}];
 * `confirm`: the confirm button's label; `danger`: style it as destructive.
 */
export function ask({ title, about, text, fields = [], confirm, danger = false }) {
  const dialog = document.querySelector('#dialog');
  const back = document.activeElement;
  const form = el('form', { method: 'dialog', className: 'dialog-form' });
  const heading = el('h2', { id: 'dialog-title', textContent: title });
  if (about) heading.append(' ', el('bdi', { textContent: about }));
  form.append(heading);
  if (text) form.append(el('p', { textContent: text }));
  const inputs = [];
  for (const f of fields) {
    const id = `dialog-${f.name}`;
    const label = el('label', { htmlFor: id, textContent: f.label });
    const input = f.type === 'textarea' ? el('textarea', { rows: 3 }) : el('input', { type: f.type ?? 'text' });
    Object.assign(input, { id, name: f.name, required: f.required ?? false });
    if (f.value !== undefined) input.value = String(f.value);
    for (const k of ['min', 'max', 'maxLength', 'step']) if (f[k] !== undefined) input[k] = f[k];
    inputs.push(input);
    form.append(label, input);
  }
  const buttons = el('div', { className: 'dialog-buttons' });
  const cancel = el('button', { type: 'button', textContent: t('dash.dialog.cancel'), className: 'cancel' });
  const ok = el('button', { type: 'submit', textContent: confirm, className: danger ? 'danger confirm' : 'confirm' });
  buttons.append(cancel, ok);
  form.append(buttons);
  dialog.replaceChildren(form);
  dialog.setAttribute('aria-labelledby', 'dialog-title');
  return new Promise((resolve) => {
    let answer = null;
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      answer = Object.fromEntries(inputs.map((i) => [i.name, i.value]));
      dialog.close();
    });
    cancel.addEventListener('click', () => dialog.close());
    dialog.addEventListener(
      'close',
      () => {
        dialog.replaceChildren();
        if (back && back.isConnected && typeof back.focus === 'function') back.focus();
        resolve(answer);
      },
      { once: true },
    );
    dialog.showModal();
    (inputs[0] ?? ok).focus();
  });
}
