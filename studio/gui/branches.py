"""Branching: continue a run from any recorded step with new settings, in tabs beside the main run."""
from __future__ import annotations

import shiboken6

from . import jobs
from .inversion_view import branch_refusal
from .view import TrajectoryView


class Branching:
    """MainWindow's branch methods (a mixin): which view the user worked with last, the branch tabs."""

    def _active_view(self) -> TrajectoryView:
        """The view the user worked with last (scrubbed, stepped, played or clicked into)."""
        w = self.focusWidget()
        while w is not None:
            if isinstance(w, TrajectoryView):
                return w
            w = w.parentWidget()
        v = self._focus_view
        if v is not None and shiboken6.isValid(v) and v.traj is not None:
            return v
        return self.mainView

    def _touch(self, view: TrajectoryView) -> None:
        self._focus_view = view

    def branch(self) -> None:
        """Continue a run from the scrubbed position with the panel's current settings.

        The source is the view the user scrubbed last: the main run or a branch (branches can nest)."""
        source = self._active_view()
        if self.busy or source.traj is None or len(source.traj) == 0:
            return
        refusal = branch_refusal(source.traj)
        if refusal is not None:
            self.show_error(f"Continue from here: {refusal}")
            return
        recipe = self._valid_recipe()
        if recipe is None:
            return
        parent = source.traj
        pos = min(source.position, len(parent))
        from_step = pos - 1
        view = TrajectoryView(names=("branchXtCanvas", "branchX0Canvas", "branchScrubber"))
        view.positionChanged.connect(lambda p, v=view: self._view_moved(v, p))
        view.scrubberBar.touched.connect(lambda v=view: self._touch(v))
        where = "" if source is self.mainView else f" of {self.branchTabs.tabText(self.branchTabs.indexOf(source))}"
        self._branch_count += 1
        title = f"#{self._branch_count} from step {pos}{where}: {recipe.sampler} {recipe.steps}"
        self.branchTabs.addTab(view, title)
        self.branchTabs.setTabToolTip(self.branchTabs.count() - 1, title)
        self.branchTabs.setCurrentWidget(view)
        self.branchTabs.show()
        self.hide_error()
        w = self._start(jobs.run_job, self.cache, recipe, parent=parent, from_step=from_step, tag=view,
                        preview=self.panel.preview_setting(),
                        on_yield=self._on_step, on_end=lambda w: self._run_ended(view, w))
        w.view = view

    def _offer_branching(self, possible: bool) -> None:
        """Enable "Continue from here" where a run can be continued; on an inversion's trajectory it is off,
        its tooltip saying why (``inversion_view.branch_refusal``)."""
        button = self.branchButton
        if not button.property("offerTip"):
            button.setProperty("offerTip", button.toolTip())
        refusal = branch_refusal(self.trajectory) if possible else None
        button.setEnabled(possible and refusal is None)
        button.setToolTip(f"Not offered: {refusal}" if refusal else button.property("offerTip"))

    def _close_branch(self, index: int) -> None:
        w = self.branchTabs.widget(index)
        if self.worker is not None and self.worker.view is w:
            self.worker.abort()  # its run ends; the view goes once the worker has stopped
            self.worker.view = None
        self.branchTabs.removeTab(index)
        if w is not None:
            w.deleteLater()
        if self.branchTabs.count() == 0:
            self.branchTabs.hide()

    def branch_views(self) -> list[TrajectoryView]:
        return [self.branchTabs.widget(i) for i in range(self.branchTabs.count())]

    def _view_moved(self, view: TrajectoryView, pos: int) -> None:
        """Move the plots' markers to ``pos``: at once, or throttled while the view's run streams steps."""
        if view.live:
            self._plot_sync.request("markers", lambda: self._show_markers(view, pos))
        else:
            self._plot_sync.cancel("markers")
            self._show_markers(view, pos)

    def _show_markers(self, view: TrajectoryView, pos: int) -> None:
        if not shiboken6.isValid(view):
            return
        if view is not self._plotted_view or not shiboken6.isValid(self._plotted_view):
            self.follow_in_plots(view)  # the plots follow the run the user is looking at
        m = view.meta_at(pos)
        if m is None:
            self.schedulePlot.set_current(None)
            self.guidancePlot.set_current(None)
            return
        t = m.t if pos == 0 else m.t_next
        self.schedulePlot.set_current(t if t >= 0 else 0.0)
        self.guidancePlot.set_current(m.index + 1 if pos else None)
