// Chaînes françaises. Mêmes clés que en.js ; une clé absente ici s'affiche
// en anglais.
export default {
  'lang.name': 'Français',
  'lang.switch': 'Langue',

  // dashboard: header, table, controls

  // dashboard: panels (hands, alerts, record)

  // student demo page
};
