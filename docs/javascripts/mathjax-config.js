// MathJax 3 configuration for pymdownx.arithmatex (generic mode): typeset only the
// `arithmatex` spans and divs, whose TeX is wrapped in \( \) and \[ \].
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
