"use client";

/** Settings from localStorage, saved on every change, with the theme applied to <html>. */

import { useCallback, useEffect, useRef, useState } from "react";
import { setApiKey } from "@/lib/api";
import { DEFAULT_SETTINGS, loadSettings, saveSettings, type Settings } from "@/lib/settings";

export function useSettings() {
  const [settings, setSettings] = useState<Settings>(DEFAULT_SETTINGS);
  const [ready, setReady] = useState(false);
  const current = useRef(settings);
  current.current = settings;

  useEffect(() => {
    const stored = loadSettings();
    setApiKey(stored.apiKey);
    setSettings(stored);
    setReady(true);
  }, []);

  const update = useCallback((patch: Partial<Settings>) => {
    setSettings((prev) => {
      const next = { ...prev, ...patch };
      saveSettings(next);
      setApiKey(next.apiKey);
      return next;
    });
  }, []);

  const resetGeneration = useCallback(() => {
    update({ ...DEFAULT_SETTINGS, theme: current.current.theme, apiKey: current.current.apiKey });
  }, [update]);

  // The theme: an explicit choice, or the system's, followed live.
  useEffect(() => {
    if (!ready) return;
    const media = window.matchMedia("(prefers-color-scheme: dark)");
    const apply = () => {
      const dark = settings.theme === "dark" || (settings.theme === "system" && media.matches);
      document.documentElement.classList.toggle("dark", dark);
    };
    apply();
    media.addEventListener("change", apply);
    return () => media.removeEventListener("change", apply);
  }, [settings.theme, ready]);

  /** Reads the latest settings at send time (no stale closure). */
  const latest = useCallback(() => current.current, []);

  return { settings, ready, update, resetGeneration, latest };
}
