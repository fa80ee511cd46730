// Templated children's stories, deterministic by seed and ASCII only: the "stories" training data and the text the
// "storyteller" preset's vocabulary is trained on. A story is 4-7 sentences: an opener ("Once upon a time, there was
// ...", "One day, ..."; one story in seven has none and starts with its plot, which names the hero first), then one of
// five plots (a lost thing found, sharing, a trip, a friend who helps, a new friend) with slots for names, animals,
// places, things, food, feelings and weather. He/she, him/her and his/her agree with the character, and a/an with the
// word after it. It lives in Model, not Training, because the storyteller preset's tokenizer is made from it.
namespace Cluster.Model;

public static class StoryCorpus
{
    public const int MinSentences = 4, MaxSentences = 7;

    /// <summary><paramref name="count"/> stories, each a single line; the same seed gives the same stories.</summary>
    public static string[] Stories(int count, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => new StoryWriter(random).Write())];
    }

    /// <summary>A child, with the pronouns that go with the name.</summary>
    private sealed record Child(string Name, string Subject, string Object, string Possessive)
    {
        public static Child Named(string name, bool girl) => girl ? new(name, "she", "her", "her") : new(name, "he", "him", "his");
    }

    /// <summary>A place and what one does there.</summary>
    private sealed record Place(string Name, string Activity);

    /// <summary>Something a child wants to do, and the sentence ending that says it was done.</summary>
    private sealed record Goal(string Wish, string Done);

    private static readonly string[] Girls = ["Lily", "Mia", "Emma", "Anna", "Sara", "Lucy", "Zoe", "Amy", "Ella", "Rose", "Kate", "Jane", "Ivy", "Nora", "Ruby", "Sue"];
    private static readonly string[] Boys = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Jake", "Bob", "Dan", "Eli", "Owen", "Joe", "Ned", "Ted"];
    private static readonly string[] Traits = ["little", "kind", "happy", "brave", "curious", "shy", "funny", "clever"];
    private static readonly string[] Animals = ["dog", "cat", "bird", "bunny", "duck", "frog", "owl", "fox", "bear", "mouse", "puppy", "kitten", "turtle", "squirrel", "elephant", "lamb"];
    private static readonly string[] AnimalLooks = ["little", "small", "tiny", "fluffy", "old", "young", "brown", "white"];
    private static readonly string[] Things = ["ball", "kite", "doll", "book", "hat", "toy car", "teddy bear", "drum", "boat", "balloon", "shell", "ring", "umbrella", "whistle"];
    private static readonly string[] ThingLooks = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "soft", "little", "big", "new", "old"];
    private static readonly string[] Foods = ["cookies", "apples", "cupcakes", "candies", "cherries", "grapes", "strawberries", "sandwiches"];
    private static readonly string[] Numbers = ["two", "three", "four", "five", "six"];
    private static readonly string[] Family = ["mom", "dad", "grandma", "grandpa", "big sister", "big brother", "aunt", "uncle"];
    private static readonly string[] Weather = ["sunny", "warm", "bright", "windy", "cool", "beautiful"];
    private static readonly string[] Glad = ["happy", "glad", "proud", "excited"];
    private static readonly string[] Unhappy = ["sad", "scared", "worried", "upset"];
    private static readonly string[] Hobbies = ["play outside", "read books", "sing songs", "draw pictures", "run and jump", "help at home", "play with toys", "look at the stars"];
    private static readonly string[] Hiding = ["under a big tree", "behind a rock", "near the pond", "in the tall grass", "under a bench", "next to a flower", "inside an old box", "under a pile of leaves"];
    private static readonly string[] Games = ["tag", "hide and seek", "catch", "chase"];
    private static readonly string[] Homes = ["forest", "lake", "river", "beach", "farm", "park", "hill", "woods"];

    private static readonly Place[] Places =
    [
        new("park", "played on the swings"), new("forest", "walked under the tall trees"), new("beach", "built a big sand castle"),
        new("garden", "picked red flowers"), new("farm", "fed the pigs and the cows"), new("lake", "fed the ducks"),
        new("hill", "ran up and down the hill"), new("river", "threw little stones into the water"), new("meadow", "picked yellow flowers"),
        new("zoo", "looked at a big elephant"), new("playground", "went down the slide"), new("woods", "looked for pine cones"),
    ];

    private static readonly Goal[] Goals =
    [
        new("fly a kite", "flew the kite high in the sky"), new("climb a big tree", "climbed to the top of the tree"),
        new("reach a red apple on a high branch", "got the red apple down"), new("build a tall tower of blocks", "built the tallest tower ever"),
        new("cross the little river", "crossed the river on the stones"), new("carry a heavy box", "carried the box home"),
        new("fix a broken toy car", "fixed the toy car"), new("find the way home", "found the way home"),
    ];

    /// <summary>One story: the hero, the sentences so far, and the random source every slot is filled from.</summary>
    private sealed class StoryWriter(Random random)
    {
        private readonly List<(string Text, bool Optional)> _sentences = [];
        private readonly Child _hero = NewChild(random, null);
        private bool _introduced;   // an opener told who the hero is (without one the plot's first sentence names the hero)
        private bool _dayTold;      // the opener began "One day": the plot goes on "later that day"

        public string Write()
        {
            Opener();
            switch (random.Next(5))
            {
                case 0: LostAndFound(); break;
                case 1: Sharing(); break;
                case 2: Trip(); break;
                case 3: FriendHelps(); break;
                default: NewFriend(); break;
            }
            // Optional sentences are kept at random, then dropped or taken back at random until the length is in bounds.
            bool[] kept = [.. _sentences.Select(s => !s.Optional || random.Next(2) == 0)];
            while (kept.Count(k => k) > MaxSentences) kept[AnyOptional(kept, true)] = false;
            while (kept.Count(k => k) < MinSentences) kept[AnyOptional(kept, false)] = true;
            return string.Join(" ", _sentences.Where((_, i) => kept[i]).Select(s => char.ToUpperInvariant(s.Text[0]) + s.Text[1..]));
        }

        /// <summary>A random optional sentence that is kept (or not): its index.</summary>
        private int AnyOptional(bool[] kept, bool isKept)
        {
            int[] candidates = [.. Enumerable.Range(0, kept.Length).Where(i => _sentences[i].Optional && kept[i] == isKept)];
            return candidates.Length > 0 ? candidates[random.Next(candidates.Length)]
                : throw new InvalidOperationException($"a plot cannot make a story of {MinSentences} to {MaxSentences} sentences");
        }

        private void Add(string text) => _sentences.Add((text, false));
        private void Maybe(string text) => _sentences.Add((text, true));
        private T Pick<T>(params T[] options) => options[random.Next(options.Length)];

        /// <summary>When the plot starts: "one day" (or "one sunny day" when <paramref name="weather"/>), unless the opener said so.</summary>
        private string Day(bool weather = false) => _dayTold ? "later that day" : weather ? $"one {Pick(Weather)} day" : "one day";

        private void Opener()
        {
            var hero = _hero;
            string kind = hero.Subject == "she" ? "girl" : "boy";
            int variant = random.Next(14);
            if (variant >= 12) return;   // one story in seven starts with its plot: the model learns to go on from anywhere
            _introduced = true;
            _dayTold = variant == 11;
            Add(variant switch
            {
                < 4 => $"Once upon a time, there was a little {kind} named {hero.Name}.",
                < 6 => $"Once upon a time, there was {A(Pick(Traits))} {kind} named {hero.Name}.",
                6 => $"Once upon a time, there was a {kind} named {hero.Name}.",
                7 => $"Once upon a time, in a small town, there lived {A(Pick(Traits))} {kind} named {hero.Name}.",
                8 => $"Once upon a time, {hero.Name} lived in a little house near the {Pick(Homes)}.",
                9 => $"There once was {A(Pick(Traits))} {kind} named {hero.Name}.",
                10 => $"Long ago, there was a {kind} named {hero.Name}.",
                _ => $"One day, {A(Pick(Traits))} {kind} named {hero.Name} went outside to play.",
            });
            Maybe($"{hero.Subject} loved to {Pick(Hobbies)}.");
        }

        private void LostAndFound()
        {
            var hero = _hero;
            string thing = Pick(Things), look = Pick(ThingLooks);
            var place = Pick(Places);
            Add(Pick(
                $"{hero.Name} had {A(look)} {thing}.",
                $"{hero.Name} had {A(look)} {thing} that {hero.Subject} loved very much.",
                _introduced ? $"{hero.Possessive} favorite toy was {A(look)} {thing}." : $"{hero.Name} loved {hero.Possessive} {look} {thing}."));
            Add(Pick(
                $"{Day()}, {hero.Subject} took the {thing} to the {place.Name}.",
                $"{Day(weather: true)}, {hero.Name} went to the {place.Name} with {hero.Possessive} {thing}."));
            Add(Pick(
                $"{hero.Subject} played with it for a long time, but then the {thing} was gone!",
                $"when {hero.Subject} looked again, the {thing} was gone."));
            Maybe(Pick($"{hero.Name} was very {Pick(Unhappy)}.", $"{hero.Name} felt sad and started to cry."));
            var helper = NewChild(random, hero);
            Maybe(Pick(
                $"{hero.Subject} looked {Pick(Hiding)} and {Pick(Hiding)}.",
                $"{hero.Possessive} friend {helper.Name} helped {hero.Object} look for it.",
                $"{hero.Possessive} {Pick(Family)} helped {hero.Object} look for it."));
            Add($"at last, {hero.Subject} found the {thing} {Pick(Hiding)}.");
            Maybe(Pick(
                $"{hero.Name} was {Pick("happy", "glad")} again.",
                $"{hero.Name} hugged the {thing} and smiled.",
                $"from that day on, {hero.Subject} kept {hero.Possessive} {thing} safe."));
        }

        private void Sharing()
        {
            var hero = _hero;
            string food = Pick(Foods);
            var friend = NewChild(random, hero);
            Add(Pick(
                $"{hero.Name} had {Pick(Numbers)} {food}.",
                _introduced ? $"{Day()}, {hero.Possessive} {Pick(Family)} gave {hero.Object} a bag of {food}." : $"{hero.Name} had a bag of {food}.",
                $"{hero.Name} had a big basket of {food}."));
            Add(Pick(
                $"then {hero.Possessive} friend {friend.Name} came to play, but {friend.Subject} had no {food}.",
                $"then {hero.Subject} saw {friend.Name}, who looked sad and hungry."));
            Maybe(Pick($"{hero.Name} wanted to keep all the {food}.", $"{hero.Name} thought about it for a moment."));
            Add(Pick(
                $"{hero.Subject} gave {friend.Name} some of {hero.Possessive} {food}.",
                $"{hero.Name} shared {hero.Possessive} {food} with {friend.Name}."));
            Maybe(Pick($"they ate the {food} together under a big tree.", "they sat on the grass and ate together."));
            Add(Pick(
                $"{friend.Name} smiled and said, \"Thank you, {hero.Name}!\"",
                $"{hero.Name} learned that sharing makes everyone happy.",
                "they were both very happy."));
        }

        private void Trip()
        {
            var hero = _hero;
            var place = Pick(Places);
            Add($"{Day(weather: true)}, {hero.Name} and {hero.Possessive} {Pick(Family)} went to the {place.Name}.");
            Maybe($"at the {place.Name}, they saw {A(Pick(AnimalLooks))} {Pick(Animals)}.");
            Add(Pick($"{hero.Name} {place.Activity}.", $"they {place.Activity}."));
            Maybe(Pick($"{hero.Name} felt very {Pick(Glad)}.", $"{hero.Name} laughed and had a lot of fun."));
            Maybe(Pick($"then they had a picnic with {Pick(Foods)}.", $"then they ate {Pick(Foods)} under a tree."));
            Add(Pick(
                "when the sun went down, they went home.",
                $"at the end of the day, {hero.Name} was tired but happy.",
                $"{hero.Name} said, \"This was the best day ever!\""));
        }

        private void FriendHelps()
        {
            var hero = _hero;
            var goal = Pick(Goals);
            bool animalHelps = random.Next(3) == 0;
            string animal = Pick(Animals);
            var friend = NewChild(random, hero);
            string helper = animalHelps ? $"the {animal}" : friend.Name;
            Add($"{Day()}, {hero.Name} wanted to {goal.Wish}.");
            Add(Pick($"but it was too hard, and {hero.Subject} felt sad.", $"{hero.Subject} tried and tried, but {hero.Subject} could not do it."));
            Maybe(Pick($"{hero.Subject} sat down and started to cry.", $"{hero.Name} did not know what to do."));
            Add(animalHelps
                ? $"then {A(Pick(Traits))} {animal} came by and said, \"I can help you!\""
                : $"then {hero.Possessive} friend {friend.Name} came by and said, \"I can help you!\"");
            Add($"together, they {goal.Done}.");
            Maybe(Pick(
                $"{hero.Name} said, \"Thank you!\" and gave {(animalHelps ? helper : friend.Object)} a big hug.",
                $"from that day on, {hero.Name} and {helper} were best friends."));
        }

        private void NewFriend()
        {
            var hero = _hero;
            var place = Pick(Places);
            string animal = Pick(Animals), feeling = Pick(Unhappy);
            Add($"{Day()}, {hero.Name} went to the {place.Name} and saw {A(Pick(AnimalLooks))} {animal}.");
            Add(Pick($"the {animal} was {feeling} and alone.", $"the {animal} looked {feeling} and lonely."));
            Maybe(Pick($"{hero.Name} asked, \"Why are you {feeling}?\"", $"{hero.Name} asked, \"Do you want to play with me?\""));
            Maybe($"the {animal} said, \"I have no friends.\"");
            Add(Pick($"{hero.Name} and the {animal} played together all day.", $"they played {Pick(Games)} until the sun went down."));
            Add(Pick($"the {animal} was not {feeling} anymore.", $"from that day on, {hero.Name} and the {animal} were best friends."));
        }
    }

    private static Child NewChild(Random random, Child? other)
    {
        while (true)
        {
            bool girl = random.Next(2) == 0;
            var child = Child.Named(girl ? Girls[random.Next(Girls.Length)] : Boys[random.Next(Boys.Length)], girl);
            if (child.Name != other?.Name) return child;
        }
    }

    /// <summary>The word with "a" or "an" before it, by its first letter.</summary>
    private static string A(string word) => ("aeiou".Contains(char.ToLowerInvariant(word[0])) ? "an " : "a ") + word;
}
