// English strings (the fallback for every key). Keys are grouped by page
// area; see i18n.js for placeholders and how markup uses them.
export default {
  'lang.name': 'English',
  'lang.switch': 'Language',

  // dashboard: header, table, controls

  // dashboard: panels (hands, alerts, record)

  // student demo page
};
