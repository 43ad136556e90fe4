// MathJax 3 configuration. Only two kinds of element are typeset (startup.elements), nothing
// else on a page is touched:
// - `.arithmatex`: pymdownx.arithmatex (generic mode) on the Markdown and API pages, TeX
//   wrapped in \( \) and \[ \];
// - `.jp-MarkdownOutput`: the Markdown cells of the executed tutorials (mkdocs-jupyter),
//   with the notebook's $ $ and $$ $$ delimiters (code and pre elements are skipped).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  startup: {
    elements: [".arithmatex", ".jp-MarkdownOutput"],
  },
};
