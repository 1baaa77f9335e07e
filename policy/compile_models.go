package policy

import "strings"

// modelDoc is a models: entry as written.
type modelDoc struct {
	file, name                        string
	line                              int
	input, output, cachedInput, image at[string]
	cacheWrite, audio                 at[string]
	flexIn, flexOut, flexCached       at[string]
	maxOutput                         at[int64]
}

func readModel(m *mapNode, name string, line int) modelDoc {
	return modelDoc{
		file: m.d.file, name: name, line: line,
		input: m.scalarText("input"), output: m.scalarText("output"),
		cachedInput: m.scalarText("cached_input"), image: m.scalarText("image"), cacheWrite: m.scalarText("cache_write"), audio: m.scalarText("audio"),
		maxOutput: m.int("max_output_tokens"),
		flexIn:    m.scalarText("flex_input"), flexOut: m.scalarText("flex_output"), flexCached: m.scalarText("flex_cached_input"),
	}
}

// models compiles the price list; a name is exact, a prefix ending in *, or
// "*" for every other model.
func (c *compiler) models(docs []modelDoc) {
	c.set.Models = map[string]*Model{}
	for _, md := range docs {
		if !c.unique("model", md.name, md.file, md.line) {
			continue
		}
		if md.name != "*" && (md.name == "" || strings.Contains(strings.TrimSuffix(md.name, "*"), "*")) {
			c.add(md.file, md.line, "models."+md.name, "a model is a name, a prefix ending in *, or \"*\" for every other model")
			continue
		}
		c.set.Models[md.name] = c.model(md)
	}
}

func (c *compiler) model(md modelDoc) *Model {
	path := "models." + md.name
	m := &Model{Name: md.name, MaxOutputTokens: md.maxOutput.v}
	for _, f := range []struct {
		key string
		v   at[string]
		dst *Price
		req bool
	}{{"input", md.input, &m.Input, true}, {"output", md.output, &m.Output, true},
		{"cached_input", md.cachedInput, &m.CachedInput, false}, {"cache_write", md.cacheWrite, &m.CacheWrite, false},
		{"image", md.image, &m.Image, false}, {"audio", md.audio, &m.Audio, false},
		{"flex_input", md.flexIn, &m.FlexInput, false}, {"flex_output", md.flexOut, &m.FlexOutput, false},
		{"flex_cached_input", md.flexCached, &m.FlexCachedInput, false}} {
		switch {
		case f.v.missing() && f.req:
			c.add(md.file, md.line, path+"."+f.key, "is required (a price such as \"2.50/1M\")")
		case f.v.set:
			pr, err := ParsePrice(f.v.v)
			if err != nil {
				c.add(md.file, f.v.line, path+"."+f.key, "%v", err)
			}
			*f.dst = pr
		}
	}
	if md.cachedInput.missing() {
		m.CachedInput = m.Input // no discount stated: cached tokens cost full price
	}
	if md.cacheWrite.missing() {
		m.CacheWrite = m.Input // no surcharge stated: cache writes cost the input price
	}
	m.HasFlex = md.flexIn.set
	switch {
	case md.flexIn.set && md.flexOut.missing():
		c.add(md.file, md.flexIn.line, path+".flex_output", "is required with flex_input (the flex tier's output price)")
	case md.flexIn.missing() && (md.flexOut.set || md.flexCached.set):
		c.add(md.file, md.line, path+".flex_input", "is required with flex_output and flex_cached_input")
	}
	if md.flexCached.missing() {
		m.FlexCachedInput = m.FlexInput
	}
	if md.maxOutput.set && md.maxOutput.v <= 0 {
		c.add(md.file, md.maxOutput.line, path+".max_output_tokens", "must be positive, got %d", md.maxOutput.v)
	}
	return m
}
