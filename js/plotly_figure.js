// Plotly's FigureWidget front end, loaded once per page and without holding up the widget's model.
//
// anywidget gives a model 2 s from its creation to load its module and run `initialize`; a model that
// misses that deadline silently drops every later message from the kernel. Plotly's own module is a
// 5 MB bundle, loaded anew for each figure; on a busy page (Voila creates every model at once) the
// third figure could miss the deadline, and then never changed again: a white chart on a dark page,
// curves that stopped at the moment the page opened. This module is small and its `initialize` returns
// at once; plotly's bundle (the `_plotly_bundle` trait) is imported when the first view of any figure
// draws, once per page, and shared by every figure. Until a figure's view draws, the kernel's changes
// land in its synced state (`_widget_data`, `_widget_layout`: see plots.publish), which the view draws.
const bundles = (globalThis.__mistudioPlotlyBundles ??= new Map());

function plotlyModule(model) {
  const version = model.get("_plotly_version");
  if (!bundles.has(version)) {
    const url = URL.createObjectURL(new Blob([model.get("_plotly_bundle")], { type: "text/javascript" }));
    bundles.set(version, import(/* webpackIgnore: true */ /* @vite-ignore */ url).finally(() => URL.revokeObjectURL(url)));
  }
  return bundles.get(version);
}

export default () => {
  let initModel = null; // the model as `initialize` got it (its listeners live as long as the model)
  let inner = null; // a promise of plotly's widget for this model, initialized on the model's first view
  const widget = () =>
    (inner ??= plotlyModule(initModel).then(async (mod) => {
      const def = typeof mod.default === "function" ? await mod.default() : mod.default;
      await def.initialize?.({ model: initModel });
      return def;
    }));
  return {
    initialize({ model }) {
      initModel = model; // and no more: the deadline above runs until this returns
    },
    async render({ model, el, signal }) {
      const def = await widget().catch((e) => {
        el.textContent = "This chart could not load plotly's front end (see the browser console).";
        throw e;
      });
      return def.render({ model, el, signal });
    },
  };
};
